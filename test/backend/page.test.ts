import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import {
  PAGE_POISON,
  PAGE_SIZE,
  allocPage,
  bindForeignPage,
  getPage,
  newPage,
  putPage,
  unbindForeignPage,
  type Page,
} from '../../backend/page.js';
import { rusty } from '../../backend/release.js';
import { SkbContext } from '../../backend/skbuff.js';

const ctx = (poisonFreed = false): SkbContext => new SkbContext({ design: rusty, poisonFreed });

test('allocPage: a local page with count 1; put to 0 returns it to the pool and the next alloc reuses it', (t) => {
  const c = ctx();
  const p = allocPage(c);
  t.is(p.count, 1);
  t.is(p.foreign, null);
  t.is(p.bytes.length, PAGE_SIZE);
  getPage(c, p);
  putPage(c, p);
  t.is(c.pages.free.length, 0, 'still referenced');
  putPage(c, p);
  t.is(p.count, 0);
  t.deepEqual(c.pages.free, [p]);
  const q = allocPage(c);
  t.is(q, p, 'pooled object reused');
  t.is(q.id, p.id);
  t.deepEqual([c.stats.pageAllocs, c.stats.pageFrees, c.stats.pageGets, c.stats.pagePuts], [2, 1, 1, 2]);
});

test('get_page/put_page on a free page are our own bugs and throw', (t) => {
  const c = ctx();
  const p = allocPage(c);
  putPage(c, p);
  t.throws(() => putPage(c, p), { message: `put_page on free page ${p.id}` });
  t.throws(() => getPage(c, p), { message: `get_page on free page ${p.id}` });
});

test('poisoning: a freed local page is overwritten with PAGE_POISON', (t) => {
  const c = ctx(true);
  const p = allocPage(c);
  p.bytes.fill(7);
  putPage(c, p);
  t.true(p.bytes.every((b) => b === PAGE_POISON));
});

testProp('Page ids are dense and unique per context, across local and foreign pages', [fc.array(fc.boolean(), { maxLength: 50 })], (t, kinds) => {
  const c = ctx();
  const ids = kinds.map((local) => (local ? allocPage(c) : newPage(c)).id);
  t.deepEqual(ids, ids.map((_, i) => i));
});

test('bindForeignPage: a view into guest memory (never copied), count 1, the grant identity', (t) => {
  const c = ctx();
  const guest = new Uint8Array(3 * PAGE_SIZE);
  const view = guest.subarray(PAGE_SIZE, 2 * PAGE_SIZE);
  const p = newPage(c);
  t.is(p.count, 0);
  bindForeignPage(p, view, { domid: 3, gref: 77 });
  t.is(p.count, 1);
  t.deepEqual(p.foreign, { domid: 3, gref: 77 });
  guest[PAGE_SIZE + 5] = 0xee;
  t.is(p.bytes[5], 0xee, 'writes by the guest show through');
});

test('bindForeignPage refuses a wrong-size view and a page the stack still references', (t) => {
  const c = ctx();
  const p = newPage(c);
  t.throws(() => bindForeignPage(p, new Uint8Array(100), { domid: 1, gref: 1 }), {
    message: `bindForeignPage: page ${p.id} needs 4096 bytes but got 100`,
  });
  bindForeignPage(p, new Uint8Array(PAGE_SIZE), { domid: 1, gref: 9 });
  getPage(c, p);
  t.throws(() => bindForeignPage(p, new Uint8Array(PAGE_SIZE), { domid: 1, gref: 10 }), {
    message: `bindForeignPage: page ${p.id} still has 1 stack references to grant 1:9`,
  });
  putPage(c, p);
  // Count 1 is only the old mapping's own ref: rebinding is allowed and resets it.
  bindForeignPage(p, new Uint8Array(PAGE_SIZE), { domid: 1, gref: 10 });
  t.is(p.count, 1);
  t.deepEqual(p.foreign, { domid: 1, gref: 10 });
});

test('a foreign page whose stack refs are all put keeps the mapping ref and never enters the local pool', (t) => {
  const c = ctx();
  const p: Page = newPage(c);
  bindForeignPage(p, new Uint8Array(PAGE_SIZE), { domid: 1, gref: 2 });
  getPage(c, p);
  putPage(c, p);
  t.is(p.count, 1);
  t.is(c.pages.free.length, 0);
  unbindForeignPage(c, p);
  t.is(p.count, 0);
  t.is(p.foreign, null);
  t.is(c.pages.free.length, 0);
  t.throws(() => unbindForeignPage(c, p), { message: `unbindForeignPage: page ${p.id} is not foreign` });
});

test('unbindForeignPage refuses while the stack still holds the page', (t) => {
  const c = ctx();
  const p = newPage(c);
  bindForeignPage(p, new Uint8Array(PAGE_SIZE), { domid: 2, gref: 5 });
  getPage(c, p);
  t.throws(() => unbindForeignPage(c, p), { message: `unbindForeignPage: page ${p.id} (grant 2:5) has count 2, expected 1` });
});
