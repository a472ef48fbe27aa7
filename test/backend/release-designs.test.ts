// Every release design through the classic cases (expand-head of a clone, pskb_copy, split, GSO segments, pull on
// a clone, coalesce across guests, trim-head after a clone, orphan of a queued skb). For each step the test records
// which pages the sink got ("p0"), which of those a live skb could still read ("!p1": early, unsafe) and which are
// unreachable but not returned yet ("~p2": late), and compares with what the design's source predicts. Then the
// bytes copied beyond rusty's, coalesce refusals, the ubuf success flags, and each page back exactly once.
import test from 'ava';
import type { Page } from '../../backend/page.js';
import { DESIGNS, type ClassicCase, type DesignInfo, type GrantSink } from '../../backend/release.js';
import {
  __pskbPullTail,
  __skbPull,
  allocSkb,
  consumeSkb,
  kfreeSkb,
  kfreeSkbPartial,
  pskbCopy,
  pskbExpandHead,
  skbClone,
  skbOrphanFrags,
  skbSegment,
  skbSplit,
  skbTryCoalesce,
  tcpTrimHead,
  type SkBuff,
  type SkbContext,
} from '../../backend/skbuff.js';
import { buildSkb, newCtx, reachablePages, type FragSpec } from './skb-fixtures.js';

/** A guest: records each release with its zerocopy flag. */
class Guest implements GrantSink {
  readonly log: { page: Page; ok: boolean }[] = [];
  release(page: Page, zerocopySuccess = true): void {
    this.log.push({ page, ok: zerocopySuccess });
  }
}

/** One run of one case under one design: steps, live roots, labelled pages, and what came back when. */
class Run {
  readonly ctx: SkbContext;
  readonly guests = [new Guest(), new Guest()];
  readonly roots = new Set<SkBuff>();
  readonly label = new Map<Page, string>();
  readonly outcome: Record<string, string> = {};
  readonly returned = new Map<Page, number>();
  constructor(readonly design: DesignInfo) {
    this.ctx = newCtx(design);
  }

  /** A netback packet from guest `g` (0 or 1): `header` linear bytes, one foreign frag per size; pages labelled prefix+i. */
  build(prefix: string, g: number, header: number, sizes: readonly number[], seed: number): SkBuff {
    const frags: FragSpec[] = sizes.map((size) => ({ offset: 0, size }));
    const b = buildSkb(this.ctx, this.guests[g]!, { header, frags, seed });
    b.pages.forEach((p, i) => this.label.set(p, `${prefix}${i}`));
    this.roots.add(b.skb);
    return b.skb;
  }

  free(skb: SkBuff): void {
    this.roots.delete(skb);
    kfreeSkb(skb);
  }

  /** Runs one step, then "flushes": records returned pages (early if reachable) and the late ones. */
  step(name: string, fn: () => void): void {
    const before = this.guests.map((g) => g.log.length);
    fn();
    const live = reachablePages(this.roots);
    const got: string[] = [];
    this.guests.forEach((g, i) => {
      for (const { page } of g.log.slice(before[i])) {
        this.returned.set(page, (this.returned.get(page) ?? 0) + 1);
        got.push(`${live.has(page) ? '!' : ''}${this.label.get(page) ?? `?${page.id}`}`);
      }
    });
    const late = [...this.label].filter(([p]) => !this.returned.has(p) && !live.has(p)).map(([, l]) => `~${l}`);
    const byLabel = (a: string, b: string): number => a.replace(/^[!~]/, '').localeCompare(b.replace(/^[!~]/, ''));
    const all = [...got.sort(byLabel), ...late.sort(byLabel)];
    if (all.length > 0) this.outcome[name] = all.join(' ');
  }
}

const ALL = 'p0 p1 p2';
const EARLY_ALL = '!p0 !p1 !p2';
/** The standard packet: 14 header bytes copied, three 1000-byte foreign frags. */
const STD = [1000, 1000, 1000];

interface CaseDef {
  /** Foreign payload bytes the case builds (what the copy and ubuf designs copy in full). */
  readonly fragBytes: number;
  readonly run: (r: Run) => void;
}

const CASES: Record<ClassicCase, CaseDef> = {
  'expand-head of a clone': {
    fragBytes: 3000,
    run(r) {
      let a!: SkBuff;
      let c!: SkBuff;
      r.step('build', () => (a = r.build('p', 0, 14, STD, 1)));
      r.step('clone', () => r.roots.add((c = skbClone(a))));
      r.step('expand C', () => void pskbExpandHead(c, 32, 0));
      r.step('free A', () => r.free(a));
      r.step('free C', () => r.free(c));
    },
  },
  pskb_copy: {
    fragBytes: 3000,
    run(r) {
      let a!: SkBuff;
      let n!: SkBuff;
      r.step('build', () => (a = r.build('p', 0, 14, STD, 1)));
      r.step('pskb_copy', () => r.roots.add((n = pskbCopy(a))));
      r.step('free A', () => r.free(a));
      r.step('free N', () => r.free(n));
    },
  },
  split: {
    fragBytes: 3000,
    run(r) {
      let a!: SkBuff;
      let b!: SkBuff;
      r.step('build', () => (a = r.build('p', 0, 14, STD, 1)));
      r.step('split', () => {
        b = allocSkb(r.ctx, 64);
        r.roots.add(b);
        skbSplit(a, b, 14 + 1500); // tcp_fragment: p1 is cut in two
      });
      r.step('free A', () => r.free(a));
      r.step('free skb1', () => r.free(b));
    },
  },
  'GSO segments': {
    fragBytes: 4200,
    run(r) {
      let a!: SkBuff;
      let segs: SkBuff[] = [];
      r.step('build', () => (a = r.build('p', 0, 54, [1400, 1400, 1400], 1)));
      r.step('segment', () => {
        a.macHeader = a.data;
        a.networkHeader = a.data + 14;
        a.transportHeader = a.data + 34;
        __skbPull(a, 54);
        a.shinfo.gsoSize = 1000;
        segs = skbSegment(a, { sg: true }) as SkBuff[];
        for (const s of segs) r.roots.add(s);
      });
      r.step('consume A', () => {
        r.roots.delete(a);
        consumeSkb(a);
      });
      segs.forEach((s, i) => r.step(`free seg${i}`, () => r.free(s)));
    },
  },
  'pull on a clone': {
    fragBytes: 3000,
    run(r) {
      let a!: SkBuff;
      let c!: SkBuff;
      r.step('build', () => (a = r.build('p', 0, 14, STD, 1)));
      r.step('clone', () => r.roots.add((c = skbClone(a))));
      r.step('pull C', () => void __pskbPullTail(c, 1000 + 20)); // p0 pulled out, 20 bytes of p1
      r.step('free A', () => r.free(a));
      r.step('free C', () => r.free(c));
    },
  },
  'coalesce across guests': {
    fragBytes: 2500,
    run(r) {
      let to!: SkBuff;
      let from!: SkBuff;
      r.step('build', () => {
        to = r.build('q', 0, 14, [500], 1);
        from = r.build('r', 1, 0, [1000, 1000], 2); // no linear data: its frags may move
      });
      r.step('coalesce', () => {
        if (!skbTryCoalesce(to, from).ok) return;
        r.roots.delete(from);
        kfreeSkbPartial(from, false); // tcp_try_coalesce's caller
      });
      r.step('free from', () => {
        if (r.roots.has(from)) r.free(from);
      });
      r.step('free to', () => r.free(to));
    },
  },
  'trim-head after a clone': {
    fragBytes: 3000,
    run(r) {
      let a!: SkBuff;
      let c!: SkBuff;
      r.step('build', () => (a = r.build('p', 0, 14, STD, 1)));
      r.step('clone', () => r.roots.add((c = skbClone(a)))); // the transmitted clone, still in flight
      r.step('trim_head A', () => void tcpTrimHead(a, 14 + 1000 + 100)); // a partial ACK
      r.step('free C', () => r.free(c));
      r.step('free A', () => r.free(a));
    },
  },
  'orphan of a queued skb': {
    fragBytes: 3000,
    run(r) {
      let a!: SkBuff;
      r.step('build', () => (a = r.build('p', 0, 14, STD, 1)));
      r.step('orphan', () => void skbOrphanFrags(a)); // netback RX drain of an expired frame
      r.step('free A', () => r.free(a));
    },
  },
};

type Outcome = Readonly<Record<string, string>>;

// The behaviour classes the sources predict.
//  chain:   one completion per packet, when its last holder dies (rusty, zccd where it carries, net_priv, token);
//  perPage: each page when its own last reference goes (page-destructor, rusty-page);
//  naive / zccd-uncovered: the packet's completion fires with the first shinfo, others still read the pages;
//  ubuf:    copies at every orphan point and completes at once; copy: everything back at build.
const chain: Record<ClassicCase, Outcome> = {
  'expand-head of a clone': { 'free C': ALL },
  pskb_copy: { 'free N': ALL },
  split: { 'free A': '~p0', 'free skb1': ALL },
  'GSO segments': { 'free seg1': '~p0', 'free seg2': '~p0 ~p1', 'free seg3': '~p0 ~p1', 'free seg4': ALL },
  'pull on a clone': { 'free A': '~p0', 'free C': ALL },
  'coalesce across guests': { 'free to': 'q0 r0 r1' },
  'trim-head after a clone': { 'free C': '~p0', 'free A': ALL },
  'orphan of a queued skb': { orphan: ALL },
};
const perPage: Record<ClassicCase, Outcome> = {
  'expand-head of a clone': { 'free C': ALL },
  pskb_copy: { 'free N': ALL },
  split: { 'free A': 'p0', 'free skb1': 'p1 p2' },
  'GSO segments': { 'free seg1': 'p0', 'free seg2': 'p1', 'free seg4': 'p2' },
  'pull on a clone': { 'free A': 'p0', 'free C': 'p1 p2' },
  'coalesce across guests': { 'free to': 'q0 r0 r1' },
  'trim-head after a clone': { 'free C': 'p0', 'free A': 'p1 p2' },
  'orphan of a queued skb': { orphan: ALL },
};
// skb_try_coalesce refused: each packet back when its own skb dies.
const refused: Outcome = { 'free from': 'r0 r1', 'free to': 'q0' };
const tokenCross: Outcome = { coalesce: '!r0 !r1', 'free to': 'q0' };

const EXPECT: Record<string, Record<ClassicCase, Outcome>> = {
  rusty: { ...chain, 'coalesce across guests': refused },
  naive: {
    'expand-head of a clone': { 'free A': EARLY_ALL },
    pskb_copy: { 'free A': EARLY_ALL },
    split: { 'free A': 'p0 !p1 !p2' },
    'GSO segments': { 'consume A': EARLY_ALL },
    'pull on a clone': { 'free A': 'p0 !p1 !p2' },
    'coalesce across guests': { coalesce: '!r0 !r1', 'free to': 'q0' },
    'trim-head after a clone': { 'free C': 'p0 !p1 !p2' },
    'orphan of a queued skb': { orphan: ALL },
  },
  zccd: { ...chain, split: { 'free A': 'p0 !p1 !p2' }, 'GSO segments': { 'consume A': EARLY_ALL } },
  net_priv: chain,
  'net_priv-hash': chain,
  'page-destructor': perPage,
  token: { ...chain, 'coalesce across guests': tokenCross },
  'token-alloc': { ...chain, 'coalesce across guests': tokenCross },
  ubuf: {
    'expand-head of a clone': { clone: ALL },
    pskb_copy: { pskb_copy: ALL },
    split: chain.split,
    'GSO segments': { segment: ALL },
    'pull on a clone': { clone: ALL },
    'coalesce across guests': refused,
    'trim-head after a clone': { clone: ALL },
    'orphan of a queued skb': { orphan: ALL },
  },
  copy: {
    'expand-head of a clone': { build: ALL },
    pskb_copy: { build: ALL },
    split: { build: ALL },
    'GSO segments': { build: ALL },
    'pull on a clone': { build: ALL },
    'coalesce across guests': { build: 'q0 r0 r1' },
    'trim-head after a clone': { build: ALL },
    'orphan of a queued skb': { build: ALL },
  },
  'rusty-page': { ...perPage, 'coalesce across guests': refused },
};

/** Cases in which ubuf copies the frags (an orphan point comes before any other holder). */
const UBUF_COPIES: readonly ClassicCase[] = ['expand-head of a clone', 'pskb_copy', 'GSO segments', 'pull on a clone', 'trim-head after a clone'];
/** Designs that refuse to move frags between these two skbs. */
const REFUSE_COALESCE = ['rusty', 'rusty-page', 'ubuf'];

function runCase(design: DesignInfo, name: ClassicCase): Run {
  const r = new Run(design);
  CASES[name].run(r);
  return r;
}

const CASE_NAMES = Object.keys(CASES) as ClassicCase[];

test('EXPECT covers every design of DESIGNS and every classic case', (t) => {
  t.deepEqual(Object.keys(EXPECT).sort(), DESIGNS.map((d) => d.name).sort());
  for (const e of Object.values(EXPECT)) t.deepEqual(Object.keys(e).sort(), [...CASE_NAMES].sort());
});

for (const design of DESIGNS) {
  for (const name of CASE_NAMES) {
    test(`${design.name}: ${name}`, (t) => {
      const r = runCase(design, name);
      t.deepEqual(r.outcome, EXPECT[design.name]![name]);
      // Early or not, every grant comes back exactly once (no double return, no leak) and only the mapping holds it.
      t.deepEqual([...r.label.keys()].map((p) => r.returned.get(p) ?? 0), [...r.label.keys()].map(() => 1));
      t.true([...r.label.keys()].every((p) => p.count === 1 && p.priv === null));
      const s = r.ctx.stats;
      t.deepEqual([s.skbAllocs - s.skbFrees, s.shinfoAllocs - s.shinfoFrees, s.pageAllocs - s.pageFrees], [0, 0, 0], 'everything freed');
      // Bytes copied beyond rusty's for the same case: the foreign payload for copy (at build) and for ubuf where it orphans.
      const base = runCase(DESIGNS[0]!, name).ctx.stats.bytesCopied;
      const payload = CASES[name].fragBytes;
      let extra = 0;
      if (design.name === 'copy' && name !== 'orphan of a queued skb') extra = payload;
      if (design.name === 'ubuf' && UBUF_COPIES.includes(name)) extra = payload;
      t.is(s.bytesCopied - base, extra, 'bytes copied beyond rusty');
      t.is(s.coalesceRefused, name === 'coalesce across guests' && REFUSE_COALESCE.includes(design.name) ? 1 : 0);
      // The zerocopy flag the sink sees: false exactly when the frags were copied (copy always; ubuf when it orphaned).
      const copiedFlag = design.name === 'copy' || (design.name === 'ubuf' && (UBUF_COPIES.includes(name) || name === 'orphan of a queued skb'));
      t.true(r.guests.every((g) => g.log.every((e) => e.ok === !copiedFlag)));
      // ubuf counts completions as netback's tx_zerocopy_success / _fail: one per packet.
      const packets = name === 'coalesce across guests' ? 2 : 1;
      const ubufFail = design.name === 'ubuf' && copiedFlag ? packets : 0;
      const ubufOk = design.name === 'ubuf' && !copiedFlag ? packets : 0;
      t.deepEqual([s.zerocopySuccess, s.zerocopyFail], [ubufOk, ubufFail]);
    });
  }
}

test('unsoundCases of each design are exactly the cases with an early return', (t) => {
  for (const design of DESIGNS) {
    const early = CASE_NAMES.filter((n) => Object.values(EXPECT[design.name]![n]).some((v) => v.includes('!')));
    t.deepEqual(early, [...design.unsoundCases], design.name);
    t.is(design.sound, early.length === 0, design.name);
    // And the runs agree (not only the table).
    const seen = CASE_NAMES.filter((n) => Object.values(runCase(design, n).outcome).some((v) => v.includes('!')));
    t.deepEqual(seen, early, design.name);
  }
});
