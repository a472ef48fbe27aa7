// sk_buff basics: allocation, the linear-area helpers, fclones, clone/copy/pskb_copy, pskb_expand_head,
// skb_copy_bits, freeing. Linux semantics per include/linux/skbuff.h and net/core/skbuff.c.
import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { allocPage } from '../../backend/page.js';
import { naive, rusty } from '../../backend/release.js';
import {
  CHECKSUM_PARTIAL,
  EFAULT,
  MAX_SKB_FRAGS,
  SKB_DATAREF_SHIFT,
  SKB_FCLONE_CLONE,
  SKB_FCLONE_ORIG,
  SKB_FCLONE_UNAVAILABLE,
  __skbPull,
  allocSkb,
  kfreeSkb,
  kfreeSkbPartial,
  pskbCopy,
  pskbExpandHead,
  skbAddFrag,
  skbCheck,
  skbClone,
  skbCloned,
  skbCopy,
  skbCopyBits,
  skbFillPageDesc,
  skbGet,
  skbHeadlen,
  skbHeaderCloned,
  skbHeaderRelease,
  skbHeadroom,
  skbIsNonlinear,
  skbPush,
  skbPut,
  skbReserve,
  skbTailroom,
  skbTrim,
  skbUnclone,
} from '../../backend/skbuff.js';
import { FakeGuest, buildSkb, concat, contentOf, localPage, newCtx } from './skb-fixtures.js';

test('alloc_skb: users 1, dataref 1, len 0, headers unset, end a cache-aligned size >= the request', (t) => {
  const ctx = newCtx(rusty);
  const skb = allocSkb(ctx, 100);
  t.is(skb.users, 1);
  t.is(skb.shinfo.dataref, 1);
  t.deepEqual([skb.len, skb.dataLen, skb.data, skb.tail], [0, 0, 0, 0]);
  t.is(skb.end, 128);
  t.is(skb.head, skb.shinfo.head);
  t.deepEqual([skb.macHeader, skb.networkHeader, skb.transportHeader], [-1, -1, -1]);
  t.false(skb.cloned);
  t.is(skb.fclone, SKB_FCLONE_UNAVAILABLE);
  t.deepEqual([skb.shinfo.nrFrags, skb.shinfo.fragList, skb.shinfo.destructor, skb.shinfo.orig], [0, null, null, null]);
  skbCheck(skb);
});

testProp(
  'reserve/put/push/pull keep len = headlen and the head/data/tail/end order',
  [fc.integer({ min: 0, max: 300 }), fc.integer({ min: 0, max: 300 }), fc.nat(), fc.nat()],
  (t, headroom, put, pushSeed, pullSeed) => {
    const ctx = newCtx(rusty);
    const skb = allocSkb(ctx, headroom + put);
    skbReserve(skb, headroom);
    t.is(skbHeadroom(skb), headroom);
    t.is(skbPut(skb, put), headroom);
    t.is(skb.len, put);
    const push = pushSeed % (headroom + 1);
    t.is(skbPush(skb, push), headroom - push);
    const pull = pullSeed % (skb.len + 1);
    t.is(__skbPull(skb, pull), headroom - push + pull);
    t.is(skb.len, put + push - pull);
    t.is(skbHeadlen(skb), skb.len);
    t.is(skbTailroom(skb), skb.end - skb.tail);
    skbCheck(skb);
  },
);

test('the panics: over, under and pulling past headlen throw', (t) => {
  const ctx = newCtx(rusty);
  const skb = allocSkb(ctx, 64);
  skbReserve(skb, 16);
  t.throws(() => skbPut(skb, 49), { message: 'skb_over_panic: put 49 at tail 16, end 64' });
  t.throws(() => skbPush(skb, 17), { message: 'skb_under_panic: push 17 with headroom 16' });
  skbPut(skb, 10);
  t.throws(() => __skbPull(skb, 11), { message: '__skb_pull: 11 exceeds headlen 10' });
  skbAddFrag(skb, localPage(ctx, 1), 0, 100);
  t.throws(() => skbPut(skb, 1), { message: 'skb_put: nonlinear skb (SKB_LINEAR_ASSERT)' });
  t.is(skbTailroom(skb), 0, 'nonlinear skbs have no tailroom');
});

test('skb_add_rx_frag accounts len and data_len; slot 18 and out-of-page frags throw', (t) => {
  const ctx = newCtx(rusty);
  const skb = allocSkb(ctx, 64);
  skbPut(skb, 20);
  const p = allocPage(ctx);
  t.throws(() => skbAddFrag(skb, p, 4000, 200), { message: `skb_add_rx_frag: frag [4000, +200) outside page ${p.id}` });
  for (let i = 0; i < MAX_SKB_FRAGS; i++) skbAddFrag(skb, i === 0 ? p : localPage(ctx, i), i, 10);
  t.deepEqual([skb.len, skb.dataLen, skb.shinfo.nrFrags], [20 + 10 * MAX_SKB_FRAGS, 10 * MAX_SKB_FRAGS, MAX_SKB_FRAGS]);
  t.true(skbIsNonlinear(skb));
  t.throws(() => skbAddFrag(skb, localPage(ctx, 99), 0, 1), { message: 'skb_add_rx_frag: already 17 frags' });
  skbCheck(skb);
});

test('skb_fill_page_desc sets a slot and nr_frags without touching len', (t) => {
  const ctx = newCtx(rusty);
  const skb = allocSkb(ctx, 64);
  const a = localPage(ctx, 1);
  const b = localPage(ctx, 2);
  skbFillPageDesc(skb, 0, a, 10, 100);
  skbFillPageDesc(skb, 1, b, 0, 50);
  t.is(skb.shinfo.nrFrags, 2);
  t.is(skb.len, 0);
  t.is(skb.shinfo.frags[1]!.page, b);
  t.throws(() => skbFillPageDesc(skb, 3, a, 0, 1), { message: 'skb_fill_page_desc: slot 3 with nr_frags 2' });
});

test('skb_clone shares the shinfo: dataref 2, both cloned; freeing one leaves dataref 1', (t) => {
  const ctx = newCtx(rusty);
  const { skb } = buildSkb(ctx, null, { header: 40, frags: [{ offset: 0, size: 1000, local: true }] });
  skb.protocol = 0x0800;
  skb.macHeader = skb.data;
  const page = skb.shinfo.frags[0]!.page;
  const n = skbClone(skb);
  t.not(n, skb);
  t.is(n.shinfo, skb.shinfo);
  t.is(n.head, skb.head);
  t.is(skb.shinfo.dataref, 2);
  t.true(skb.cloned && n.cloned);
  t.true(skbCloned(skb) && skbCloned(n));
  t.deepEqual([n.len, n.dataLen, n.data, n.tail, n.protocol, n.macHeader], [skb.len, skb.dataLen, skb.data, skb.tail, 0x0800, skb.macHeader]);
  t.is(page.count, 1, 'clone takes no page refs');
  kfreeSkb(n);
  t.is(n.users, 0);
  t.is(skb.shinfo.dataref, 1);
  t.false(skbCloned(skb), 'cloned flag stays but dataref says private');
  kfreeSkb(skb);
  t.is(page.count, 0);
  t.is(ctx.stats.shinfoFrees, 1);
});

test('skb_header_release: dataref high half counts payload-only refs (skb_header_cloned)', (t) => {
  const ctx = newCtx(rusty);
  const skb = allocSkb(ctx, 64);
  const n = skbClone(skb);
  t.true(skbHeaderCloned(skb));
  skbHeaderRelease(n);
  t.is(skb.shinfo.dataref, 2 + (1 << SKB_DATAREF_SHIFT));
  t.false(skbHeaderCloned(skb), 'only one skb still uses the header');
  t.true(skbCloned(skb));
  kfreeSkb(n);
  t.is(skb.shinfo.dataref, 1, 'a nohdr skb drops both halves');
  kfreeSkb(skb);
  t.is(ctx.stats.shinfoFrees, 1);
});

test('fclone: the first clone uses the companion, a second one does not; the pair is pooled when both are free', (t) => {
  const ctx = newCtx(rusty);
  const skb = allocSkb(ctx, 64, true);
  t.is(skb.fclone, SKB_FCLONE_ORIG);
  const c1 = skbClone(skb);
  t.is(c1, skb.fclones!.skb2);
  t.is(c1.fclone, SKB_FCLONE_CLONE);
  const c2 = skbClone(skb);
  t.is(c2.fclone, SKB_FCLONE_UNAVAILABLE);
  t.is(ctx.stats.fcloneHits, 1);
  kfreeSkb(skb);
  t.is(ctx.fclonePool.length, 0, 'companion still in use');
  kfreeSkb(c1);
  t.is(ctx.fclonePool.length, 1);
  kfreeSkb(c2);
  // Reuse: the companion is available again and the original freed before its clone also works.
  const again = allocSkb(ctx, 64, true);
  t.is(again, skb);
  const c3 = skbClone(again);
  t.is(c3, c1);
  kfreeSkb(c3);
  const c4 = skbClone(again);
  t.is(c4, c1, 'companion free again after its clone died');
  kfreeSkb(again);
  kfreeSkb(c4);
  t.is(ctx.fclonePool.length, 1);
  t.is(ctx.stats.skbAllocs, ctx.stats.skbFrees);
});

test('a freed skb is poison to touch: users 0 and every op throws', (t) => {
  const ctx = newCtx(rusty);
  const skb = allocSkb(ctx, 64);
  kfreeSkb(skb);
  t.is(skb.users, 0);
  t.is(skb.shinfo.nrFrags, 0);
  t.throws(() => kfreeSkb(skb), { message: 'kfree_skb: skb is freed' });
  t.throws(() => skbClone(skb), { message: 'skb_clone: skb is freed' });
  t.throws(() => skbGet(skb), { message: 'skb_get: skb is freed' });
  t.throws(() => skbCopyBits(skb, 0, new Uint8Array(1), 0, 0), { message: 'skb_copy_bits: skb is freed' });
});

test('skb_get: one more user; the data goes only when the last user frees', (t) => {
  const ctx = newCtx(rusty);
  const { skb } = buildSkb(ctx, null, { header: 10, frags: [{ offset: 0, size: 10, local: true }] });
  const page = skb.shinfo.frags[0]!.page;
  t.is(skbGet(skb), skb);
  t.is(skb.users, 2);
  kfreeSkb(skb);
  t.is(page.count, 1);
  t.throws(() => kfreeSkbPartial(skbGet(skb), false), { message: 'kfree_skb_partial: skb has 2 users' });
  kfreeSkb(skb);
  kfreeSkb(skb);
  t.is(page.count, 0);
});

test('skb_copy: a linear private copy with the headroom, no page refs, bytes counted', (t) => {
  const ctx = newCtx(rusty);
  const { skb, model } = buildSkb(ctx, null, { header: 50, headroom: 40, frags: [{ offset: 100, size: 900, local: true }, { offset: 0, size: 30, local: true }] });
  skb.head.fill(0x5a, 0, 40);
  skb.shinfo.gsoSize = 500;
  const page = skb.shinfo.frags[0]!.page;
  const before = ctx.stats.bytesCopied;
  const n = skbCopy(skb);
  t.is(n.dataLen, 0);
  t.is(n.shinfo.nrFrags, 0);
  t.is(skbHeadroom(n), 40);
  t.deepEqual(contentOf(n), model);
  t.deepEqual(n.head.subarray(0, 40), new Uint8Array(40).fill(0x5a));
  t.is(n.shinfo.gsoSize, 500);
  t.is(page.count, 1);
  t.is(ctx.stats.bytesCopied - before, 40 + model.length);
  skbCheck(n);
});

test('pskb_copy: copies headlen, shares frags (get_page) and the frag_list (skb_get); no parent ref without a destructor', (t) => {
  const ctx = newCtx(rusty);
  const { skb, model } = buildSkb(ctx, null, { header: 60, frags: [{ offset: 0, size: 700, local: true }] });
  const child = buildSkb(ctx, null, { header: 0, frags: [{ offset: 5, size: 300, local: true }], seed: 2 });
  skb.shinfo.fragList = child.skb;
  skb.len += child.skb.len;
  skb.dataLen += child.skb.len;
  const page = skb.shinfo.frags[0]!.page;
  const n = pskbCopy(skb);
  t.not(n.head, skb.head);
  t.is(skbHeadlen(n), 60);
  t.is(page.count, 2);
  t.is(n.shinfo.fragList, child.skb);
  t.is(child.skb.users, 2);
  t.is(skb.shinfo.dataref, 1);
  t.false(skb.cloned);
  t.is(n.shinfo.orig, null);
  t.deepEqual(contentOf(n), concat([model, child.model]));
  skbCheck(n);
  kfreeSkb(skb);
  t.is(page.count, 1);
  t.is(child.skb.users, 1);
  t.deepEqual(contentOf(n), concat([model, child.model]));
  kfreeSkb(n);
  t.is(page.count, 0);
  t.is(child.skb.users, 0);
});

test('pskb_copy of a destructor skb takes a parent ref (rusty) and the parent becomes cloned', (t) => {
  const ctx = newCtx(rusty);
  const guest = new FakeGuest();
  const { skb } = buildSkb(ctx, guest, { header: 20, frags: [{ offset: 0, size: 100 }] });
  const n = pskbCopy(skb);
  t.is(n.shinfo.orig, skb.shinfo);
  t.is(skb.shinfo.dataref, 2 + (1 << SKB_DATAREF_SHIFT));
  t.true(skbCloned(skb));
  t.is(ctx.stats.parentRefs, 1);
});

test('pskb_expand_head: headroom grows by nhead, data kept, header offsets shifted, private and uncloned', (t) => {
  const ctx = newCtx(rusty);
  const { skb, model } = buildSkb(ctx, null, { header: 70, headroom: 16, frags: [{ offset: 0, size: 64, local: true }] });
  skb.macHeader = skb.data;
  skb.networkHeader = skb.data + 14;
  skb.transportHeader = -1;
  skb.ipSummed = CHECKSUM_PARTIAL;
  skb.csumStart = skb.data + 34;
  const c = skbClone(skb);
  const oldShinfo = skb.shinfo;
  const page = skb.shinfo.frags[0]!.page;
  t.is(pskbExpandHead(c, 100, 50), 0);
  t.not(c.shinfo, oldShinfo);
  t.is(skbHeadroom(c), 116);
  t.is(c.end, 320); // SKB_DATA_ALIGN(old end 128 + 100 + 50)
  t.deepEqual([c.macHeader, c.networkHeader, c.transportHeader, c.csumStart], [116, 130, -1, 150]);
  t.false(c.cloned);
  t.is(c.shinfo.dataref, 1);
  t.is(oldShinfo.dataref, 1, 'the clone released its ref on the old shinfo');
  t.is(page.count, 2, 'both shinfos hold the frag page');
  t.deepEqual(contentOf(c), model);
  t.deepEqual(contentOf(skb), model);
  skbCheck(c);
  skbCheck(skb);
  t.throws(() => pskbExpandHead(skbGet(c), 0, 0), { message: 'pskb_expand_head: skb is shared (BUG_ON(skb_shared(skb)))' });
});

test('skb_unclone only expands a cloned skb', (t) => {
  const ctx = newCtx(rusty);
  const skb = allocSkb(ctx, 64);
  const sh = skb.shinfo;
  t.is(skbUnclone(skb), 0);
  t.is(skb.shinfo, sh);
  const c = skbClone(skb);
  t.is(skbUnclone(c), 0);
  t.not(c.shinfo, sh);
  t.is(ctx.stats.expandHeads, 1);
});

test('skb_copy_bits: -EFAULT outside [-headroom, len], exact bytes inside', (t) => {
  const ctx = newCtx(rusty);
  const { skb, model } = buildSkb(ctx, null, { header: 10, headroom: 8, frags: [{ offset: 0, size: 10, local: true }] });
  const out = new Uint8Array(40);
  t.is(skbCopyBits(skb, 0, out, 0, 21), -EFAULT);
  t.is(skbCopyBits(skb, 15, out, 0, 6), -EFAULT);
  t.is(skbCopyBits(skb, -9, out, 0, 1), -EFAULT);
  t.is(skbCopyBits(skb, -8, out, 0, 28), 0);
  t.deepEqual(out.subarray(8, 28), model);
  t.is(skbCopyBits(skb, 5, out, 1, 10), 0);
  t.deepEqual(out.subarray(1, 11), model.subarray(5, 15));
});

testProp(
  'skb_copy_bits reads linear data, frags and a nested frag_list in order',
  [
    fc.integer({ min: 0, max: 200 }),
    fc.array(fc.tuple(fc.integer({ min: 0, max: 4000 }), fc.integer({ min: 0, max: 300 })), { maxLength: 5 }),
    fc.array(fc.tuple(fc.integer({ min: 0, max: 100 }), fc.integer({ min: 0, max: 4000 }), fc.integer({ min: 0, max: 96 })), { maxLength: 3 }),
    fc.nat(),
    fc.nat(),
  ],
  (t, header, frags, children, a, b) => {
    const ctx = newCtx(rusty);
    const top = buildSkb(ctx, null, { header, frags: frags.map(([o, s]) => ({ offset: Math.min(o, 4096 - s), size: s, local: true })) });
    const models = [top.model];
    let last = null;
    for (const [i, [h, o, s]] of children.entries()) {
      const c = buildSkb(ctx, null, { header: h, frags: [{ offset: Math.min(o, 4096 - s), size: s, local: true }], seed: 10 + i });
      if (last === null) top.skb.shinfo.fragList = c.skb;
      else last.next = c.skb;
      last = c.skb;
      top.skb.len += c.skb.len;
      top.skb.dataLen += c.skb.len;
      models.push(c.model);
    }
    const model = concat(models);
    skbCheck(top.skb);
    t.deepEqual(contentOf(top.skb), model);
    const off = model.length === 0 ? 0 : a % model.length;
    const len = b % (model.length - off + 1);
    const out = new Uint8Array(len);
    t.is(skbCopyBits(top.skb, off, out, 0, len), 0);
    t.deepEqual(out, model.subarray(off, off + len));
  },
);

test('__skb_trim shortens a linear skb only', (t) => {
  const ctx = newCtx(rusty);
  const skb = allocSkb(ctx, 64);
  skbPut(skb, 30);
  skbTrim(skb, 12);
  t.deepEqual([skb.len, skb.tail], [12, 12]);
  skbAddFrag(skb, localPage(ctx, 1), 0, 1);
  t.throws(() => skbTrim(skb, 1), { message: '__skb_trim: nonlinear skb' });
});

test('pools: a freed skb, shinfo and head are reused, so steady state allocates no new heads', (t) => {
  const ctx = newCtx(naive);
  for (let i = 0; i < 5; i++) {
    const { skb } = buildSkb(ctx, null, { header: 40, frags: [{ offset: 0, size: 100, local: true }] });
    const c = skbClone(skb);
    kfreeSkb(skb);
    kfreeSkb(c);
  }
  t.is(ctx.stats.headAllocs, 1);
  t.is(ctx.stats.pageAllocs - ctx.stats.pageFrees, 0);
  t.is(ctx.pages.free.length, 1);
  t.is(ctx.skbPool.length, 2);
});
