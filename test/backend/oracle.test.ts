import test from 'ava';
import { fc, testProp } from '@fast-check/ava';
import { readFileSync } from 'node:fs';
import { GrantOracle } from '../../backend/oracle.js';
import { Page, PAGE_SIZE } from '../../backend/page.js';
import type { SkBuff } from '../../backend/skbuff.js';

// Hand-built skb structures: the oracle reads only shinfo.nrFrags/frags/fragList, skb.next and page.id/foreign,
// so plain objects of that shape are the whole world it sees (no mechanism involved).
interface FakeShinfo {
  nrFrags: number;
  frags: { page: Page; offset: number; size: number }[];
  fragList: FakeSkb | null;
}
interface FakeSkb {
  shinfo: FakeShinfo;
  next: FakeSkb | null;
}

function shinfo(pages: readonly Page[], fragList: readonly FakeSkb[] = []): FakeShinfo {
  const frags = pages.map((page) => ({ page, offset: 0, size: 1 }));
  // 17 slots like MAX_SKB_FRAGS; stale slots beyond nrFrags must be ignored.
  while (frags.length < 17) frags.push({ page: STALE, offset: 0, size: 1 });
  return { nrFrags: pages.length, frags, fragList: chain(fragList) };
}

function skb(sh: FakeShinfo): FakeSkb {
  return { shinfo: sh, next: null };
}

function chain(list: readonly FakeSkb[]): FakeSkb | null {
  for (let i = 0; i < list.length; i++) list[i]!.next = list[i + 1] ?? null;
  return list[0] ?? null;
}

const STALE = new Page(999, new Uint8Array(PAGE_SIZE));

function foreignPage(id: number, gref: number): Page {
  const p = new Page(id, new Uint8Array(PAGE_SIZE));
  p.foreign = { domid: 1, gref };
  return p;
}

function oracleOver(roots: FakeSkb[]): GrantOracle {
  return new GrantOracle(() => roots as unknown as SkBuff[]);
}

test('returning a page that a live skb reaches is an early return, with the path that reaches it', (t) => {
  const p = [foreignPage(0, 40), foreignPage(1, 41), foreignPage(2, 42)];
  const roots = [skb(shinfo([p[0]!])), skb(shinfo([], [skb(shinfo([])), skb(shinfo([p[0]!, p[2]!]))]))];
  const o = oracleOver(roots);
  p.forEach((x) => o.noteMapped(x));
  o.step = 3;
  roots.shift(); // the first root is freed: page 0 is still reachable through the second root's frag_list
  t.false(o.noteReturned(p[2]!));
  t.true(o.noteReturned(p[1]!));
  t.deepEqual(
    o.report.violations.map((v) => [v.kind, v.pageId, v.gref, v.step, v.message]),
    [['early-return', 2, 42, 3, 'early return of gref 42 (domid 1, page 2) at step 3: still reachable from root 0 frag_list[1] frags[1]']],
  );
  t.is(o.report.earlyReturns, 1);
  t.is(o.report.returned, 2);
});

test('a page becomes returnable only when the last root reaching it is gone (clones share one shinfo)', (t) => {
  const p = foreignPage(5, 7);
  const sh = shinfo([p]);
  const roots = [skb(sh), skb(sh)]; // an skb and its clone
  const o = oracleOver(roots);
  o.noteMapped(p);
  t.true(o.isReachable(p));
  roots.pop();
  t.true(o.isReachable(p));
  roots.pop();
  t.false(o.isReachable(p));
  t.true(o.noteReturned(p));
  t.is(o.violationCount, 0);
});

test('slots beyond nrFrags do not make a page reachable', (t) => {
  const p = foreignPage(3, 9);
  const sh = shinfo([p]);
  sh.nrFrags = 0; // __pskb_pull_tail dropped the frag; the slot still holds the stale pointer
  const o = oracleOver([skb(sh)]);
  o.noteMapped(p);
  t.true(o.noteReturned(p));
  t.is(o.report.earlyReturns, 0);
});

test('returning a grant twice is a double return; returning a never-mapped page too', (t) => {
  const p = foreignPage(0, 42);
  const o = oracleOver([]);
  o.noteMapped(p);
  o.step = 4;
  t.true(o.noteReturned(p));
  t.false(o.noteReturned(p));
  t.false(o.noteReturned(foreignPage(6, 1)));
  t.deepEqual(
    o.report.violations.map((v) => [v.kind, v.message]),
    [
      ['double-return', 'double return of gref 42 (domid 1, page 0) at step 4: it was already handed back'],
      ['double-return', 'double return of page 6 at step 4: no grant was ever mapped on it'],
    ],
  );
  t.is(o.report.doubleReturns, 2);
});

test('a re-bound page is a new incarnation: its new grant can be returned once more', (t) => {
  const p = foreignPage(1, 10);
  const o = oracleOver([]);
  o.noteMapped(p);
  t.true(o.noteReturned(p));
  p.foreign = { domid: 1, gref: 11 };
  o.noteMapped(p);
  t.true(o.noteReturned(p));
  t.false(o.noteReturned(p));
  t.is(o.report.violations[0]!.gref, 11);
  t.is(o.report.mapped, 2);
});

test('mapping onto a page whose grant is still mapped, or without a grant, is a netback bug and throws', (t) => {
  const p = foreignPage(1, 10);
  const o = oracleOver([]);
  o.noteMapped(p);
  t.throws(() => o.noteMapped(p), { message: 'oracle: page 1 mapped to gref 10 while gref 10 is still mapped on it' });
  t.throws(() => o.noteMapped(new Page(2, new Uint8Array(PAGE_SIZE))), { message: 'oracle: page 2 noted as mapped but has no foreign grant' });
});

test('at quiescence a mapped grant nothing reaches is a leak, counted once; a reachable one is not', (t) => {
  const leaked = foreignPage(2, 30);
  const held = foreignPage(4, 31);
  const roots = [skb(shinfo([held]))];
  const o = oracleOver(roots);
  o.step = 1;
  o.noteMapped(leaked);
  o.noteMapped(held);
  o.step = 9;
  t.is(o.checkQuiescent(), 1);
  t.is(o.checkQuiescent(), 0);
  t.deepEqual(o.report.violations.map((v) => v.message), [
    'leak of gref 30 (domid 1, page 2): mapped at step 1, unreachable and not returned at quiescence (step 9)',
  ]);
  // The leaked grant coming back afterwards is late, not a double return.
  t.true(o.noteReturned(leaked));
  t.is(o.report.doubleReturns, 0);
  t.is(o.report.leaks, 1);
});

test('late: unreachable but not yet returned pages are counted, not reported', (t) => {
  const p = [foreignPage(0, 1), foreignPage(1, 2), foreignPage(2, 3)];
  const roots = [skb(shinfo([p[0]!]))];
  const o = oracleOver(roots);
  p.forEach((x) => o.noteMapped(x));
  t.is(o.scanLate(), 2);
  t.is(o.lateCount(), 2);
  o.noteReturned(p[1]!);
  roots.pop();
  t.is(o.scanLate(), 2);
  t.is(o.report.lateTotal, 4);
  t.is(o.violationCount, 0);
});

test('a flushed batch costs one walk of the roots', (t) => {
  const pages = [0, 1, 2, 3, 4].map((i) => foreignPage(i, 100 + i));
  const roots = [skb(shinfo([pages[4]!]))];
  let walks = 0;
  const o = new GrantOracle(() => {
    walks++;
    return roots as unknown as SkBuff[];
  });
  pages.forEach((x) => o.noteMapped(x));
  t.is(o.noteReturnedBatch(pages.slice(0, 4)), 0);
  t.is(walks, 1);
  t.is(o.noteReturnedBatch(pages, 0), 0);
  t.is(walks, 1);
});

test('only the first maxRecorded violations keep their message; the counters keep counting', (t) => {
  const o = new GrantOracle(() => [], { maxRecorded: 2 });
  for (let i = 0; i < 5; i++) o.noteReturned(foreignPage(i, i));
  t.is(o.report.violations.length, 2);
  t.is(o.report.doubleReturns, 5);
});

test('a frag_list cycle is reported as a mechanism bug instead of looping', (t) => {
  const a = skb(shinfo([]));
  const b = skb(shinfo([]));
  a.shinfo.fragList = b;
  b.next = b; // cycle
  const o = oracleOver([a]);
  t.throws(() => o.scanLate(), { message: 'oracle: frag_list chain longer than 65536 (a cycle?)' });
  const c = skb(shinfo([]));
  c.shinfo.nrFrags = 18;
  t.throws(() => oracleOver([c]).scanLate(), { message: 'oracle: nrFrags is corrupt: expected 0 <= x <= 17 but got 18' });
});

// Reference model for the property: recursive reachability with a Set, the slow obvious way.
function reachableIds(roots: readonly FakeSkb[]): Set<number> {
  const ids = new Set<number>();
  const walk = (s: FakeSkb): void => {
    for (let i = 0; i < s.shinfo.nrFrags; i++) ids.add(s.shinfo.frags[i]!.page.id);
    for (let f = s.shinfo.fragList; f !== null; f = f.next) walk(f);
  };
  roots.forEach(walk);
  return ids;
}

const structureArb = fc.record({
  pages: fc.integer({ min: 1, max: 40 }),
  // each root: page indexes in frags, and up to two frag_list members with their own page indexes
  roots: fc.array(
    fc.record({
      frags: fc.array(fc.nat(), { maxLength: 17 }),
      list: fc.array(fc.array(fc.nat(), { maxLength: 17 }), { maxLength: 3 }),
      shareWithPrevious: fc.boolean(),
    }),
    { maxLength: 8 },
  ),
  events: fc.array(fc.record({ page: fc.nat(), dropRoot: fc.boolean() }), { maxLength: 60 }),
});

testProp('early/double/leak classification agrees with a Set-based reference walk', [structureArb], (t, s) => {
  const pages = Array.from({ length: s.pages }, (_, i) => foreignPage(i, 1000 + i));
  const roots: FakeSkb[] = [];
  for (const r of s.roots) {
    const prev = roots[roots.length - 1];
    if (r.shareWithPrevious && prev !== undefined) {
      roots.push(skb(prev.shinfo)); // a clone
      continue;
    }
    const list = r.list.map((ids) => skb(shinfo(ids.map((i) => pages[i % s.pages]!))));
    roots.push(skb(shinfo(r.frags.map((i) => pages[i % s.pages]!), list)));
  }
  const o = oracleOver(roots);
  pages.forEach((p) => o.noteMapped(p));
  const mapped = new Set(pages.map((p) => p.id));
  let early = 0;
  let double = 0;
  for (const e of s.events) {
    if (e.dropRoot && roots.length > 0) roots.splice(e.page % roots.length, 1);
    const p = pages[e.page % s.pages]!;
    const reach = reachableIds(roots);
    const expectOk = mapped.has(p.id) && !reach.has(p.id);
    if (!mapped.has(p.id)) double++;
    else if (reach.has(p.id)) early++;
    mapped.delete(p.id);
    t.is(o.noteReturned(p), expectOk);
  }
  const reach = reachableIds(roots);
  const leaks = [...mapped].filter((id) => !reach.has(id)).length;
  t.is(o.checkQuiescent(), leaks);
  t.deepEqual([o.report.earlyReturns, o.report.doubleReturns, o.report.leaks], [early, double, leaks]);
});

// The oracle must stay independent of the mechanism it checks.
const source = readFileSync(new URL('../../../backend/oracle.ts', import.meta.url), 'utf8');
const compiled = readFileSync(new URL('../../backend/oracle.js', import.meta.url), 'utf8');

test('the oracle imports page/skbuff/release as types only (no runtime import in source or compiled JS)', (t) => {
  const imports = source.split('\n').filter((l) => /^\s*import\b/.test(l) && /['"]\.\/(page|skbuff|release)\.js['"]/.test(l));
  t.true(imports.length > 0);
  for (const l of imports) t.regex(l, /^import type \{[^}]*\} from '\.\/(page|skbuff|release)\.js';$/);
  t.notRegex(compiled, /(page|skbuff|release)\.js/);
  t.notRegex(compiled, /\bimport\s*\(/);
});

test('the oracle never reads the mechanism\'s bookkeeping: dataref, page count, destructor(Arg), orig', (t) => {
  const code = source.replace(/\/\/.*$/gm, '');
  t.notRegex(code, /\.(dataref|count|destructor|destructorArg|orig|users)\b/);
  t.notRegex(code, /\[\s*['"](dataref|count|destructor|destructorArg|orig|users)['"]\s*\]/);
});
