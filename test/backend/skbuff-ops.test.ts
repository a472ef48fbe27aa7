// sk_buff data operations with Linux semantics: __pskb_pull_tail, pskb_may_pull, skb_linearize, pskb_trim,
// tcp_trim_head, skb_split, skb_segment, skb_try_coalesce, skb_shift, skb_orphan_frags.
import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import type { Page } from '../../backend/page.js';
import { naive, rusty } from '../../backend/release.js';
import {
  CHECKSUM_PARTIAL,
  EINVAL,
  MAX_SKB_FRAGS,
  __pskbPullTail,
  __skbPull,
  allocSkb,
  kfreeSkb,
  pskbCopy,
  pskbMayPull,
  pskbTrim,
  skbCheck,
  skbClone,
  skbCloned,
  skbHeadlen,
  skbLinearize,
  skbOrphanFrags,
  skbPut,
  skbReserve,
  skbSegment,
  skbShift,
  skbSplit,
  skbTryCoalesce,
  tcpTrimHead,
  type SkBuff,
} from '../../backend/skbuff.js';
import { FakeGuest, buildSkb, concat, contentOf, newCtx, type Built } from './skb-fixtures.js';

const L = (offset: number, size: number) => ({ offset, size, local: true });
const pagesOf = (skb: SkBuff): Page[] => skb.shinfo.frags.slice(0, skb.shinfo.nrFrags).map((f) => f.page);
const fragsOf = (skb: SkBuff): [number, number][] => skb.shinfo.frags.slice(0, skb.shinfo.nrFrags).map((f) => [f.offset, f.size]);

/** Appends `child` to `parent`'s frag_list and accounts its length, as ip_frag_reasm / skb_gro_receive_list do. */
function chain(parent: SkBuff, child: SkBuff): void {
  const s = parent.shinfo;
  if (s.fragList === null) s.fragList = child;
  else {
    let last = s.fragList;
    while (last.next !== null) last = last.next;
    last.next = child;
  }
  parent.len += child.len;
  parent.dataLen += child.len;
}

// ---- __pskb_pull_tail ---------------------------------------------------------------------------------

test('__pskb_pull_tail with tailroom: fully pulled pages are put, a partly pulled frag is advanced, no expand', (t) => {
  const ctx = newCtx(rusty);
  const { skb, model } = buildSkb(ctx, null, { header: 20, tailroom: 300, frags: [L(0, 100), L(200, 100), L(0, 100)] });
  const [a, b, c] = pagesOf(skb) as [Page, Page, Page];
  const copied = ctx.stats.bytesCopied;
  t.true(__pskbPullTail(skb, 150));
  t.is(ctx.stats.expandHeads, 0);
  t.is(a.count, 0, 'fully pulled page put');
  t.deepEqual([b.count, c.count], [1, 1]);
  t.deepEqual(fragsOf(skb), [[250, 50], [0, 100]]);
  t.deepEqual([skbHeadlen(skb), skb.dataLen, skb.len], [170, 150, 320]);
  t.is(ctx.stats.bytesCopied - copied, 150);
  t.deepEqual(contentOf(skb), model);
  skbCheck(skb);
});

test('__pskb_pull_tail partly into frag 0 keeps every frag (the `if (!i) goto end` path)', (t) => {
  const ctx = newCtx(rusty);
  const { skb, model } = buildSkb(ctx, null, { header: 10, tailroom: 100, frags: [L(0, 100), L(0, 100)] });
  t.true(__pskbPullTail(skb, 40));
  t.deepEqual(fragsOf(skb), [[40, 60], [0, 100]]);
  t.deepEqual(contentOf(skb), model);
});

test('__pskb_pull_tail without tailroom expands by eat + 128; on a clone it expands even with room', (t) => {
  const ctx = newCtx(rusty);
  const { skb, model } = buildSkb(ctx, null, { header: 32, headroom: 32, frags: [L(0, 500)] });
  t.is(skb.end, 64);
  t.true(__pskbPullTail(skb, 100));
  t.is(ctx.stats.expandHeads, 1);
  t.is(skb.end, 320); // SKB_DATA_ALIGN(64 + 100 + 128)
  t.deepEqual(contentOf(skb), model);

  const b = buildSkb(ctx, null, { header: 10, tailroom: 500, frags: [L(0, 100)] });
  const c = skbClone(b.skb);
  const sh = b.skb.shinfo;
  t.true(__pskbPullTail(c, 100));
  t.not(c.shinfo, sh);
  t.is(sh.nrFrags, 1, 'the clone partner keeps its frags');
  t.deepEqual(contentOf(b.skb), b.model);
  t.deepEqual(contentOf(c), b.model);
  t.is(c.dataLen, 0);
});

test('__pskb_pull_tail into the frag_list: eaten skbs are consumed, a shared partly eaten one is cloned', (t) => {
  const ctx = newCtx(rusty);
  const top = buildSkb(ctx, null, { header: 10, tailroom: 1000, frags: [L(0, 50)] });
  const c1 = buildSkb(ctx, null, { header: 0, frags: [L(0, 60)], seed: 2 });
  const c2 = buildSkb(ctx, null, { header: 0, frags: [L(0, 70)], seed: 3 });
  chain(top.skb, c1.skb);
  chain(top.skb, c2.skb);
  const model = concat([top.model, c1.model, c2.model]);
  c2.skb.users++; // someone else holds c2 (skb_shared)
  const [p0] = pagesOf(top.skb) as [Page];
  t.true(__pskbPullTail(top.skb, 50 + 60 + 20));
  t.is(p0.count, 0);
  t.is(c1.skb.users, 0, 'fully eaten frag_list skb consumed');
  const head = top.skb.shinfo.fragList!;
  t.not(head, c2.skb, 'shared skb replaced by a clone');
  t.is(c2.skb.users, 1, 'our reference to the shared one dropped');
  t.deepEqual([head.len, c2.skb.len], [50, 70]);
  t.deepEqual(contentOf(top.skb), model);
  t.deepEqual(contentOf(c2.skb), c2.model);
  skbCheck(top.skb);
  skbCheck(c2.skb);
});

test('__pskb_pull_tail past data_len is a caller bug', (t) => {
  const ctx = newCtx(rusty);
  const { skb } = buildSkb(ctx, null, { header: 10, frags: [L(0, 5)] });
  t.throws(() => __pskbPullTail(skb, 6), { message: '__pskb_pull_tail: delta 6 with data_len 5' });
});

test('pskb_may_pull: true without work when linear enough, false past len, else pulls', (t) => {
  const ctx = newCtx(rusty);
  const { skb, model } = buildSkb(ctx, null, { header: 30, frags: [L(0, 100)] });
  t.true(pskbMayPull(skb, 30));
  t.is(ctx.stats.bytesCopied, 0);
  t.false(pskbMayPull(skb, 131));
  t.is(skbHeadlen(skb), 30);
  t.true(pskbMayPull(skb, 54));
  t.is(skbHeadlen(skb), 54);
  t.deepEqual(contentOf(skb), model);
});

test('skb_linearize: everything linear, every page put, frag_list dropped', (t) => {
  const ctx = newCtx(rusty);
  const top = buildSkb(ctx, null, { header: 10, frags: [L(0, 100), L(7, 9)] });
  const c = buildSkb(ctx, null, { header: 3, frags: [L(0, 11)], seed: 2 });
  chain(top.skb, c.skb);
  const pages = [...pagesOf(top.skb), ...pagesOf(c.skb)];
  t.is(skbLinearize(top.skb), 0);
  t.deepEqual([top.skb.dataLen, top.skb.shinfo.nrFrags, top.skb.shinfo.fragList], [0, 0, null]);
  t.deepEqual(pages.map((p) => p.count), [0, 0, 0]);
  t.deepEqual(contentOf(top.skb), concat([top.model, c.model]));
  t.is(ctx.shinfoPool.length >= 1, true);
});

// ---- pskb_trim ----------------------------------------------------------------------------------------

for (const [name, len, frags, counts] of [
  ['inside the linear area drops every frag', 5, [] as [number, number][], [0, 0, 0]],
  ['at the end of the linear area drops every frag', 10, [], [0, 0, 0]],
  ['inside frag 1 cuts it and drops frag 2', 10 + 100 + 30, [[0, 100], [0, 30]], [1, 1, 0]],
  ['at the end of frag 1 keeps it whole', 10 + 100 + 50, [[0, 100], [0, 50]], [1, 1, 0]],
] as const) {
  test(`pskb_trim ${name}`, (t) => {
    const ctx = newCtx(rusty);
    const { skb, model } = buildSkb(ctx, null, { header: 10, frags: [L(0, 100), L(0, 50), L(0, 70)] });
    const pages = pagesOf(skb);
    t.is(pskbTrim(skb, len), 0);
    t.deepEqual(fragsOf(skb), frags);
    t.deepEqual(pages.map((p) => p.count), counts);
    t.is(skb.len, len);
    t.deepEqual(contentOf(skb), model.subarray(0, len));
    skbCheck(skb);
  });
}

test('pskb_trim of a clone unclones first; the partner keeps its bytes and pages', (t) => {
  const ctx = newCtx(rusty);
  const { skb, model } = buildSkb(ctx, null, { header: 10, frags: [L(0, 100), L(0, 50)] });
  const c = skbClone(skb);
  t.is(pskbTrim(c, 20), 0);
  t.is(ctx.stats.expandHeads, 1);
  t.deepEqual(contentOf(skb), model);
  t.deepEqual(contentOf(c), model.subarray(0, 20));
  t.deepEqual(pagesOf(skb).map((p) => p.count), [2, 1], 'the trimmed clone keeps only frag 0');
  t.is(pskbTrim(c, 50), 0, 'len >= skb.len is a no-op');
  t.is(c.len, 20);
});

test('pskb_trim into the frag_list trims that skb (cloning it when shared) and drops the rest', (t) => {
  const ctx = newCtx(rusty);
  const top = buildSkb(ctx, null, { header: 10, frags: [L(0, 20)] });
  const c1 = buildSkb(ctx, null, { header: 5, frags: [L(0, 40)], seed: 2 });
  const c2 = buildSkb(ctx, null, { header: 0, frags: [L(0, 30)], seed: 3 });
  chain(top.skb, c1.skb);
  chain(top.skb, c2.skb);
  const model = concat([top.model, c1.model, c2.model]);
  c1.skb.users++;
  t.is(pskbTrim(top.skb, 10 + 20 + 25), 0);
  const first = top.skb.shinfo.fragList!;
  t.not(first, c1.skb);
  t.is(first.len, 25);
  t.is(first.next, null);
  t.is(c2.skb.users, 0, 'the skbs past len are dropped');
  t.deepEqual(contentOf(c1.skb), c1.model, 'the shared one is untouched');
  t.deepEqual(contentOf(top.skb), model.subarray(0, 55));
  skbCheck(top.skb);
});

// ---- tcp_trim_head ------------------------------------------------------------------------------------

test('tcp_trim_head eats linear bytes, then whole and partial frags', (t) => {
  const ctx = newCtx(rusty);
  const { skb, model } = buildSkb(ctx, null, { header: 10, frags: [L(0, 100), L(300, 50)] });
  const [a, b] = pagesOf(skb) as [Page, Page];
  t.is(tcpTrimHead(skb, 4), 0);
  t.deepEqual([skbHeadlen(skb), skb.len], [6, 156]);
  t.is(tcpTrimHead(skb, 6 + 100 + 20), 0);
  t.is(a.count, 0);
  t.is(b.count, 1);
  t.deepEqual(fragsOf(skb), [[320, 30]]);
  t.deepEqual([skbHeadlen(skb), skb.len], [0, 30]);
  t.deepEqual(contentOf(skb), model.subarray(130));
  skbCheck(skb);
});

test('tcp_trim_head unclones a clone first; refuses frag_list skbs and bad lengths', (t) => {
  const ctx = newCtx(rusty);
  const { skb, model } = buildSkb(ctx, null, { header: 10, frags: [L(0, 100)] });
  const c = skbClone(skb);
  t.is(tcpTrimHead(c, 50), 0);
  t.deepEqual(contentOf(skb), model);
  t.deepEqual(contentOf(c), model.subarray(50));
  t.throws(() => tcpTrimHead(c, 0), { message: 'tcp_trim_head: bad len 0 for skb len 60' });
  const child = buildSkb(ctx, null, { header: 1, frags: [] });
  chain(skb, child.skb);
  t.throws(() => tcpTrimHead(skb, 1), { message: 'tcp_trim_head: skb has a frag_list' });
});

// ---- skb_split ----------------------------------------------------------------------------------------

test('skb_split inside the header: skb1 gets the rest of the header and every frag (no new page refs)', (t) => {
  const ctx = newCtx(rusty);
  const { skb, model } = buildSkb(ctx, null, { header: 50, frags: [L(0, 100), L(0, 30)] });
  const pages = pagesOf(skb);
  const skb1 = allocSkb(ctx, 64);
  skbSplit(skb, skb1, 20);
  t.deepEqual(contentOf(skb), model.subarray(0, 20));
  t.deepEqual(contentOf(skb1), model.subarray(20));
  t.deepEqual([skb.shinfo.nrFrags, skb1.shinfo.nrFrags, skbHeadlen(skb1)], [0, 2, 30]);
  t.deepEqual(pages.map((p) => p.count), [1, 1]);
  t.is(skb1.shinfo.orig, null, 'no destructor, no parent ref');
  skbCheck(skb);
  skbCheck(skb1);
});

testProp(
  'skb_split at any point: bytes partition exactly, a cut frag gets one more page ref, nothing leaks',
  [fc.integer({ min: 0, max: 40 }), fc.array(fc.integer({ min: 1, max: 200 }), { minLength: 1, maxLength: 5 }), fc.nat()],
  (t, header, sizes, at) => {
    const ctx = newCtx(rusty);
    const { skb, model } = buildSkb(ctx, null, { header, frags: sizes.map((s) => L(0, s)) });
    const len = at % (skb.len + 1);
    const skb1 = allocSkb(ctx, 64);
    const pages = pagesOf(skb);
    const before = pages.reduce((n, p) => n + p.count, 0);
    skbSplit(skb, skb1, len);
    t.deepEqual(contentOf(skb), model.subarray(0, len));
    t.deepEqual(contentOf(skb1), model.subarray(len));
    const refs = new Map<Page, number>();
    for (const p of [...pagesOf(skb), ...pagesOf(skb1)]) refs.set(p, (refs.get(p) ?? 0) + 1);
    for (const p of pages) t.is(p.count, refs.get(p) ?? 0, 'each frag slot holds exactly one page ref');
    t.true(pages.reduce((n, p) => n + p.count, 0) - before <= 1);
    skbCheck(skb);
    skbCheck(skb1);
    kfreeSkb(skb);
    kfreeSkb(skb1);
    for (const p of pages) t.is(p.count, 0);
  },
);

test('skb_split refuses a cloned skb, a frag_list skb and a non-empty skb1', (t) => {
  const ctx = newCtx(rusty);
  const { skb } = buildSkb(ctx, null, { header: 10, frags: [L(0, 10)] });
  const c = skbClone(skb);
  t.throws(() => skbSplit(skb, allocSkb(ctx, 64), 5), { message: 'skb_split: skb is cloned (skbUnclone it first, as tcp_fragment does)' });
  kfreeSkb(c);
  const used = allocSkb(ctx, 64);
  skbPut(used, 1);
  t.throws(() => skbSplit(skb, used, 5), { message: 'skb_split: skb1 must be a fresh, empty, private skb' });
  const child = buildSkb(ctx, null, { header: 1, frags: [] });
  chain(skb, child.skb);
  t.throws(() => skbSplit(skb, allocSkb(ctx, 64), 5), { message: 'skb_split: skb has a frag_list' });
});

// ---- skb_segment --------------------------------------------------------------------------------------

function gsoSkb(ctx: ReturnType<typeof newCtx>, sink: FakeGuest | null, gso: number, frags: { offset: number; size: number; local?: boolean }[], payloadLinear = 0): Built {
  const b = buildSkb(ctx, sink, { header: 54 + payloadLinear, frags });
  const skb = b.skb;
  skb.macHeader = skb.data;
  skb.networkHeader = skb.data + 14;
  skb.transportHeader = skb.data + 34;
  __skbPull(skb, 54);
  skb.shinfo.gsoSize = gso;
  return b;
}

testProp(
  'skb_segment: each segment is headers + its gso_size chunk; sg shares pages, non-sg copies',
  [fc.integer({ min: 1, max: 700 }), fc.array(fc.integer({ min: 1, max: 900 }), { minLength: 1, maxLength: 4 }), fc.integer({ min: 0, max: 100 }), fc.boolean()],
  (t, gso, sizes, linear, sg) => {
    const ctx = newCtx(rusty);
    const b = gsoSkb(ctx, null, gso, sizes.map((s) => L(0, s)), linear);
    const hdr = b.model.subarray(0, 54);
    const payload = b.model.subarray(54);
    const pages = pagesOf(b.skb);
    const res = skbSegment(b.skb, { sg });
    if (typeof res === 'number') return t.fail(`skb_segment returned ${res}`);
    t.is(res.length, Math.ceil(payload.length / gso));
    res.forEach((seg, i) => {
      skbCheck(seg);
      t.deepEqual(contentOf(seg), concat([hdr, payload.subarray(i * gso, (i + 1) * gso)]));
      t.deepEqual([seg.macHeader, seg.networkHeader, seg.transportHeader], [seg.data, seg.data + 14, seg.data + 34]);
      if (!sg) t.is(seg.dataLen, 0);
    });
    const shared = res.reduce((n, s) => n + s.shinfo.nrFrags, 0);
    t.is(pages.reduce((n, p) => n + p.count, 0), pages.length + (sg ? shared : 0));
    t.is(b.skb.len, payload.length, 'input left as it was');
    for (const s of res) kfreeSkb(s);
    t.deepEqual(pages.map((p) => p.count), pages.map(() => 1));
  },
);

test('skb_segment returns -EINVAL without gso_size and when a segment would need more than 17 frags (nothing leaks)', (t) => {
  const ctx = newCtx(rusty);
  const b = gsoSkb(ctx, null, 0, [L(0, 10)]);
  t.is(skbSegment(b.skb, { sg: true }), -EINVAL);
  const many = gsoSkb(ctx, null, 100, Array.from({ length: 17 }, () => L(0, 2)));
  const child = buildSkb(ctx, null, { header: 0, frags: Array.from({ length: 5 }, () => L(0, 2)), seed: 3 });
  chain(many.skb, child.skb);
  const pages = [...pagesOf(many.skb), ...pagesOf(child.skb)];
  const allocs = ctx.stats.skbAllocs;
  t.is(skbSegment(many.skb, { sg: true }), -EINVAL);
  t.true(ctx.stats.skbAllocs > allocs, 'segments were built before the overflow');
  t.is(ctx.stats.skbAllocs - ctx.stats.skbFrees, 3, 'and freed again: only the three skbs we built are live');
  t.true(pages.every((p) => p.count === 1));
  t.deepEqual(skbSegment(many.skb, { sg: false }).constructor, Array, 'without sg it copies and works');
});

test('skb_segment: linear bytes of a frag_list skb after page data are copied into a local page frag', (t) => {
  const ctx = newCtx(rusty);
  const b = gsoSkb(ctx, null, 1000, [L(0, 100)]);
  const child = buildSkb(ctx, null, { header: 40, frags: [L(0, 60)], seed: 4 });
  chain(b.skb, child.skb);
  const res = skbSegment(b.skb, { sg: true }) as SkBuff[];
  t.is(res.length, 1);
  const seg = res[0]!;
  t.is(seg.shinfo.nrFrags, 3);
  t.is(seg.shinfo.frags[1]!.page.count, 1, 'a fresh local page');
  t.deepEqual(contentOf(seg), concat([b.model, child.model]));
});

// ---- skb_try_coalesce ---------------------------------------------------------------------------------

test('skb_try_coalesce copies a small `from` into `to`\'s tailroom', (t) => {
  const ctx = newCtx(rusty);
  const to = buildSkb(ctx, null, { header: 10, tailroom: 200, frags: [] });
  const from = buildSkb(ctx, null, { header: 30, frags: [L(0, 50)], seed: 2 });
  t.deepEqual(skbTryCoalesce(to.skb, from.skb), { ok: true, fragstolen: false, delta: 0 });
  t.deepEqual(contentOf(to.skb), concat([to.model, from.model]));
  t.is(ctx.stats.coalesceCopied, 1);
  t.is(pagesOf(from.skb)[0]!.count, 1, 'no page ref moved');
});

test('skb_try_coalesce moves frags of a header-less `from`; a cloned `from` gives extra page refs', (t) => {
  const ctx = newCtx(naive);
  const to = buildSkb(ctx, null, { header: 10, frags: [L(0, 300)] });
  const from = buildSkb(ctx, null, { header: 0, frags: [L(0, 200), L(0, 100)], seed: 2 });
  const fp = pagesOf(from.skb);
  t.deepEqual(skbTryCoalesce(to.skb, from.skb), { ok: true, fragstolen: false, delta: 300 });
  t.is(to.skb.shinfo.nrFrags, 3);
  t.deepEqual(fp.map((p) => p.count), [1, 1], 'refs moved, not taken');
  t.deepEqual([from.skb.len, from.skb.shinfo.nrFrags], [0, 0]);
  t.deepEqual(contentOf(to.skb), concat([to.model, from.model]));
  kfreeSkb(from.skb);
  t.deepEqual(fp.map((p) => p.count), [1, 1]);

  const f2 = buildSkb(ctx, null, { header: 0, frags: [L(0, 500)], seed: 3 });
  const keep = skbClone(f2.skb);
  t.true(skbTryCoalesce(to.skb, f2.skb).ok);
  t.is(pagesOf(keep)[0]!.count, 2);
  t.deepEqual(contentOf(keep), f2.model);
  skbCheck(to.skb);
});

test('skb_try_coalesce refuses: cloned `to`, frag_list, linear `from` without room, too many frags', (t) => {
  const ctx = newCtx(naive);
  const to = buildSkb(ctx, null, { header: 10, frags: [L(0, 300)] });
  const c = skbClone(to.skb);
  const from = buildSkb(ctx, null, { header: 0, frags: [L(0, 200)], seed: 2 });
  t.false(skbTryCoalesce(to.skb, from.skb).ok);
  kfreeSkb(c);
  const linear = buildSkb(ctx, null, { header: 100, frags: [L(0, 200)], seed: 3 });
  t.false(skbTryCoalesce(to.skb, linear.skb).ok);
  const many = buildSkb(ctx, null, { header: 0, frags: Array.from({ length: 17 }, () => L(0, 1)), seed: 4 });
  t.false(skbTryCoalesce(to.skb, many.skb).ok);
  const child = buildSkb(ctx, null, { header: 1, frags: [] });
  chain(from.skb, child.skb);
  t.false(skbTryCoalesce(to.skb, from.skb).ok);
  t.is(to.skb.shinfo.nrFrags, 1);
  t.is(ctx.stats.coalesceMoved, 0);
});

// ---- skb_shift ----------------------------------------------------------------------------------------

test('skb_shift merges a contiguous frag into tgt\'s last frag and drops that page ref', (t) => {
  const ctx = newCtx(naive);
  const tgt = buildSkb(ctx, null, { header: 0, frags: [L(0, 100)] });
  const page = pagesOf(tgt.skb)[0]!;
  const skb = allocSkb(ctx, 64);
  page.count++;
  skb.shinfo.frags[0]!.page = page;
  skb.shinfo.frags[0]!.offset = 100;
  skb.shinfo.frags[0]!.size = 50;
  skb.shinfo.nrFrags = 1;
  skb.len = skb.dataLen = 50;
  t.is(skbShift(tgt.skb, skb, 30), 30, 'partial: only sizes move');
  t.deepEqual(fragsOf(tgt.skb), [[0, 130]]);
  t.deepEqual(fragsOf(skb), [[130, 20]]);
  t.is(page.count, 2);
  t.is(skbShift(tgt.skb, skb, 20), 20, 'whole frag merged');
  t.deepEqual(fragsOf(tgt.skb), [[0, 150]]);
  t.is(skb.shinfo.nrFrags, 0);
  t.is(page.count, 1);
  t.deepEqual([tgt.skb.ipSummed, skb.ipSummed, skb.len, tgt.skb.len], [CHECKSUM_PARTIAL, CHECKSUM_PARTIAL, 0, 150]);
  skbCheck(tgt.skb);
  skbCheck(skb);
});

testProp(
  'skb_shift moves whole frags and splits the last one (get_page); bytes move exactly',
  [fc.array(fc.integer({ min: 1, max: 300 }), { minLength: 1, maxLength: 6 }), fc.integer({ min: 0, max: 6 }), fc.nat()],
  (t, sizes, tgtFrags, at) => {
    const ctx = newCtx(naive);
    const tgt = buildSkb(ctx, null, { header: 5, frags: Array.from({ length: tgtFrags }, () => L(0, 10)) });
    const src = buildSkb(ctx, null, { header: 0, frags: sizes.map((s) => L(0, s)), seed: 2 });
    const shiftlen = 1 + (at % src.skb.len);
    const n = skbShift(tgt.skb, src.skb, shiftlen);
    if (n === 0) {
      t.true(tgtFrags + sizes.length > MAX_SKB_FRAGS, 'refused only when out of slots');
      t.deepEqual(contentOf(src.skb), src.model);
      t.deepEqual(contentOf(tgt.skb), tgt.model);
    } else {
      t.is(n, shiftlen);
      t.deepEqual(contentOf(tgt.skb), concat([tgt.model, src.model.subarray(0, n)]));
      t.deepEqual(contentOf(src.skb), src.model.subarray(n));
    }
    skbCheck(tgt.skb);
    skbCheck(src.skb);
    const all = new Set([...pagesOf(tgt.skb), ...pagesOf(src.skb)]);
    kfreeSkb(tgt.skb);
    kfreeSkb(src.skb);
    for (const p of all) t.is(p.count, 0);
  },
);

test('skb_shift: 0 when skb has linear data; shiftlen past len is a caller bug', (t) => {
  const ctx = newCtx(naive);
  const tgt = buildSkb(ctx, null, { header: 0, frags: [L(0, 10)] });
  const src = buildSkb(ctx, null, { header: 3, frags: [L(0, 10)], seed: 2 });
  t.is(skbShift(tgt.skb, src.skb, 5), 0);
  t.throws(() => skbShift(tgt.skb, src.skb, 14), { message: 'skb_shift: shiftlen 14 with skb len 13' });
});

// ---- skb_orphan_frags ---------------------------------------------------------------------------------

test('skb_orphan_frags copies foreign frags into local pages and puts the foreign pages', (t) => {
  const ctx = newCtx(rusty);
  const guest = new FakeGuest();
  const { skb, pages, model } = buildSkb(ctx, guest, { header: 20, frags: [{ offset: 10, size: 300 }, L(0, 40), { offset: 0, size: 4096 }] });
  const local = pagesOf(skb)[1]!;
  t.is(skbOrphanFrags(skb), 0);
  t.true(pagesOf(skb).every((p) => p.foreign === null));
  t.is(pagesOf(skb)[1], local, 'local frags stay');
  t.deepEqual(pages.map((p) => p.count), [1, 1], 'only the mappings hold the foreign pages');
  t.deepEqual(guest.ids(), pages.map((p) => p.id), 'the destructor ran at once: nothing refers to them');
  t.is(skb.shinfo.destructor, null);
  t.is(ctx.stats.bytesCopied, 300 + 4096);
  t.deepEqual(contentOf(skb), model);
  t.is(skbOrphanFrags(skb), 0);
  t.is(ctx.stats.bytesCopied, 300 + 4096, 'a second call has nothing to do');
  skbCheck(skb);
});

test('skb_orphan_frags on a clone: a private shinfo without a parent ref; the partner keeps the foreign pages', (t) => {
  const ctx = newCtx(rusty);
  const guest = new FakeGuest();
  const { skb, pages, model } = buildSkb(ctx, guest, { header: 20, frags: [{ offset: 0, size: 100 }] });
  const c = skbClone(skb);
  const sh = skb.shinfo;
  t.is(skbOrphanFrags(c), 0);
  t.not(c.shinfo, sh);
  t.is(c.shinfo.orig, null);
  t.false(skbCloned(skb), 'the partner is alone on the old shinfo');
  t.is(pages[0]!.count, 2);
  t.deepEqual(contentOf(c), model);
  t.deepEqual(guest.ids(), []);
  kfreeSkb(skb);
  t.deepEqual(guest.ids(), [pages[0]!.id], 'the grant goes back when the partner dies, not pinned by the orphan');
  t.deepEqual(contentOf(c), model);
});

test('skb_orphan_frags replaces frag_list skbs that carry foreign pages and drops a parent ref', (t) => {
  const ctx = newCtx(rusty);
  const guest = new FakeGuest();
  const top = buildSkb(ctx, guest, { header: 10, frags: [{ offset: 0, size: 50 }] });
  const child = buildSkb(ctx, guest, { header: 0, frags: [{ offset: 0, size: 70 }], seed: 2 });
  chain(top.skb, child.skb);
  const model = concat([top.model, child.model]);
  const n = pskbCopy(top.skb);
  t.is(n.shinfo.orig, top.skb.shinfo);
  t.is(child.skb.users, 2);
  t.is(skbOrphanFrags(n), 0);
  t.is(n.shinfo.orig, null);
  t.not(n.shinfo.fragList, child.skb);
  t.is(child.skb.users, 1);
  t.is(top.skb.shinfo.dataref, 1, 'the payload ref on the parent is gone');
  t.deepEqual(contentOf(n), model);
  kfreeSkb(top.skb);
  t.deepEqual(guest.ids().sort(), [top.pages[0]!.id, child.pages[0]!.id].sort(), 'nothing pins the grants any more');
  t.deepEqual(contentOf(n), model);
  skbCheck(n);
});

test('skb_orphan_frags on a local-only skb does nothing', (t) => {
  const ctx = newCtx(rusty);
  const { skb } = buildSkb(ctx, null, { header: 10, frags: [L(0, 50)] });
  const sh = skb.shinfo;
  t.is(skbOrphanFrags(skb), 0);
  t.is(skb.shinfo, sh);
  t.is(ctx.stats.bytesCopied, 0);
});

test('skb_reserve past end throws', (t) => {
  const ctx = newCtx(rusty);
  const skb = allocSkb(ctx, 10);
  t.throws(() => skbReserve(skb, 65), { message: 'skb_reserve: 65 does not fit (tail 0, end 64)' });
});
