// Units of the lab: the promptness tracker against an independent model, quantiles, pacing, counters to metrics,
// the claims' verdict rules on hand-made rows, the design wrapper of the op-sequence workload and the probes.
import test from 'ava';
import { fc, testProp } from '@fast-check/ava';
import type { Page } from '../../backend/page.js';
import { naive, rusty } from '../../backend/release.js';
import type { SkBuff } from '../../backend/skbuff.js';
import type { TxPacket } from '../../frontend/netfront.js';
import { VirtualClock } from '../../shared/clock.js';
import { executeOps } from '../../tools/fuzz/executor.js';
import { formatOp } from '../../tools/fuzz/ops.js';
import { opsForSeed } from '../../tools/fuzz/runner.js';
import { measureClaims, type Claim } from '../../tools/lab/claims.js';
import { labDesigns, type LabDesign } from '../../tools/lab/designs.js';
import { breakingOp, BuildObserver, observedDesign, probeOps, runOps } from '../../tools/lab/ops.js';
import { runLab, sameFigures } from '../../tools/lab/runner.js';
import { PromptnessTracker, quantile } from '../../tools/lab/promptness.js';
import { sumCounters, toResult, withRelativeThroughput, ALLOC_COUNTERS, CALLBACK_COUNTERS, REFOP_COUNTERS, type LabResult } from '../../tools/lab/results.js';
import type { RunMeasure } from '../../tools/lab/run.js';
import { PacedSource, WORKLOADS } from '../../tools/lab/workloads.js';

// ---- quantiles -----------------------------------------------------------------------------------------------

test('quantile is nearest-rank: the smallest value with at least q of the values at or below it', (t) => {
  const hundred = Float64Array.from({ length: 100 }, (_, i) => i + 1);
  const cases: [ArrayLike<number>, number, number][] = [
    [[], 0.5, 0],
    [[7], 0.5, 7],
    [[7], 0.99, 7],
    [[1, 2], 0.5, 1],
    [[1, 2], 0.51, 2],
    [hundred, 0.5, 50],
    [hundred, 0.99, 99],
    [hundred, 1, 100],
    [[0, 0, 0, 9], 0.75, 0],
    [[0, 0, 0, 9], 0.76, 9],
  ];
  for (const [xs, q, want] of cases) t.is(quantile(xs, q), want, `q=${q} of [${Array.from(xs).slice(0, 5).join(',')}...]`);
});

// ---- the promptness tracker against a model --------------------------------------------------------------------

/** Fake skbs: the tracker reads only shinfo.nrFrags, frags[i].page.id, fragList and next. */
function fakeSkb(pageIds: readonly number[], list: SkBuff | null = null): SkBuff {
  const frags = pageIds.map((id) => ({ page: { id }, offset: 0, size: 1 }));
  return { next: null, shinfo: { nrFrags: frags.length, frags, fragList: list } } as unknown as SkBuff;
}
const page = (id: number): Page => ({ id }) as unknown as Page;

/** One step of the model world: map new pages, add roots (some nesting one in a frag_list), drop roots, return pages. */
const stepArb = fc.record({
  map: fc.integer({ min: 0, max: 3 }),
  roots: fc.array(fc.record({ pick: fc.array(fc.nat(), { maxLength: 4 }), nested: fc.boolean() }), { maxLength: 2 }),
  drop: fc.array(fc.nat(), { maxLength: 2 }),
  ret: fc.array(fc.nat(), { maxLength: 3 }),
});

testProp(
  'the tracker stamps a page at the first scan that finds it mapped and unreachable and reports each return\'s delay',
  [fc.array(stepArb, { minLength: 1, maxLength: 30 })],
  (t, steps) => {
    const tracker = new PromptnessTracker();
    let roots: { skb: SkBuff; pages: number[] }[] = [];
    const mapped = new Set<number>();
    const stamp = new Map<number, number>(); // model: first step a scan found it mapped and unreachable
    const delays: number[] = [];
    let nextId = 0;
    steps.forEach((s, i) => {
      const step = i + 1;
      const now = step * 0.5;
      for (let k = 0; k < s.map; k++) {
        const id = nextId++;
        mapped.add(id);
        tracker.noteMapped(page(id));
      }
      const live = [...mapped];
      for (const r of s.roots) {
        if (live.length === 0) break;
        const ids = r.pick.map((p) => live[p % live.length]!);
        const skb = r.nested ? fakeSkb([], fakeSkb(ids)) : fakeSkb(ids);
        roots.push({ skb, pages: ids });
      }
      for (const d of s.drop) if (roots.length > 0) roots.splice(d % roots.length, 1);
      // Returns happen during the step, before its scan: the delay is counted from the earlier stamp.
      const back: Page[] = [];
      for (const r of s.ret) {
        const cand = [...mapped];
        if (cand.length === 0) break;
        const id = cand[r % cand.length]!;
        mapped.delete(id);
        back.push(page(id));
        const at = stamp.get(id);
        delays.push(at === undefined ? 0 : step - at);
        stamp.delete(id);
      }
      tracker.noteReturned(back, back.length, step, now);
      const reach = new Set(roots.flatMap((r) => r.pages));
      for (const id of mapped) if (!reach.has(id) && !stamp.has(id)) stamp.set(id, step);
      tracker.scan((fn) => roots.forEach((r) => fn(r.skb)), step, now);
    });
    const sorted = [...delays].sort((a, b) => a - b);
    const s = tracker.summary();
    t.is(s.returned, delays.length);
    t.is(s.heldLate, delays.filter((d) => d > 0).length);
    t.is(s.steps.p50, quantile(sorted, 0.5));
    t.is(s.steps.p99, quantile(sorted, 0.99));
    t.is(s.steps.max, sorted.length === 0 ? 0 : sorted[sorted.length - 1]!);
    // Each step here is 0.5 ms.
    t.is(s.ms.max, s.steps.max * 0.5);
    t.is(tracker.outstanding, mapped.size);
    t.is(tracker.unreachableOutstanding, stamp.size);
    roots = [];
  },
  { numRuns: 300 },
);

test('the tracker ignores returns of pages it never saw mapped (the oracle counts those) and remaps after a return', (t) => {
  const tr = new PromptnessTracker();
  tr.noteReturned([page(3)], 1, 1, 1);
  t.is(tr.summary().returned, 0);
  tr.noteMapped(page(3));
  tr.scan(() => {}, 2, 2);
  tr.noteReturned([page(3)], 1, 5, 9);
  tr.noteMapped(page(3));
  tr.scan((fn) => fn(fakeSkb([3])), 6, 10);
  tr.noteReturned([page(3)], 1, 7, 11);
  // Returned within the step whose scan stamped it (a caller that returns after scanning): 0 steps, not late.
  tr.noteMapped(page(4));
  tr.scan(() => {}, 8, 12);
  tr.noteReturned([page(4)], 1, 8, 12);
  const s = tr.summary();
  t.deepEqual({ returned: s.returned, heldLate: s.heldLate, max: s.steps.max, maxMs: s.ms.max }, { returned: 3, heldLate: 1, max: 3, maxMs: 7 });
});

test('the tracker refuses corrupt structure with exact messages', (t) => {
  const tr = new PromptnessTracker();
  tr.noteMapped(page(1));
  const bad = { next: null, shinfo: { nrFrags: 99, frags: [], fragList: null } } as unknown as SkBuff;
  t.throws(() => tr.scan((fn) => fn(bad), 1, 1), { message: 'promptness: nrFrags is corrupt: expected 0 <= x <= 0 but got 99' });
  t.throws(() => tr.noteMapped(page(-2)), { message: 'promptness: page id is corrupt: expected a non-negative integer but got -2' });
});

// ---- pacing ----------------------------------------------------------------------------------------------------

class CountingSource {
  readonly maxFrameLen = 100;
  calls = 0;
  started = 0;
  gso: boolean | null = null;
  next(): TxPacket {
    this.calls++;
    return { len: 60, pageOffset: 0, csumBlank: false, gsoSize: 0, writeTo: () => {} };
  }
  receive(): boolean {
    return true;
  }
  connected(gso: boolean): void {
    this.gso = gso;
  }
  start(): void {
    this.started++;
  }
}

test('a paced source sends at most burst + rate × time frames, asks its source only when a frame may go, and says when', (t) => {
  const clock = new VirtualClock();
  const inner = new CountingSource();
  const p = new PacedSource(inner, clock, 1000, 4);
  let sent = 0;
  for (let i = 0; i < 2000; i++) {
    while (p.next(clock.now()) !== null) sent++;
    if (i === 0) {
      t.is(sent, 4, 'the burst');
      t.is(p.nextDeadline(), 1, 'the next credit comes 1 ms later at 1000 pps');
    }
    clock.advance(0.25);
  }
  // 2000 × 0.25 ms = 500 ms at 1000 pps after a burst of 4 (the last 0.25 ms is not asked for).
  t.true(sent >= 500 && sent <= 504, `sent ${sent}`);
  t.is(inner.calls, sent);
  t.true(p.receive(new Uint8Array(1), 0, 1));
  p.connected(true);
  p.start();
  t.deepEqual({ gso: inner.gso, started: inner.started, max: p.maxFrameLen }, { gso: true, started: 1, max: 100 });
  t.throws(() => new PacedSource(inner, clock, 0), { message: 'pps must be positive and finite but got 0' });
  t.throws(() => new PacedSource(inner, clock, 10, 0), { message: 'burst must be a positive integer but got 0' });
});

// ---- counters to metrics ---------------------------------------------------------------------------------------

const COUNTERS = {
  skbAllocs: 3,
  shinfoAllocs: 1,
  pageAllocs: 2,
  designAllocs: 4,
  pageGets: 4,
  pagePuts: 5,
  parentRefs: 1,
  destructorCalls: 1,
  netPageCallbacks: 1,
  tokensFinished: 0,
  pageReleases: 0,
  zerocopySuccess: 0,
  zerocopyFail: 0,
  bytesCopied: 50,
  segments: 9,
  hashLookups: 7,
};

function measureOf(over: Partial<RunMeasure> = {}): RunMeasure {
  return {
    packets: 10,
    bytes: 1000,
    mapped: 5,
    guests: [],
    earlyReturns: 0,
    doubleReturns: 0,
    leaks: 0,
    otherFailures: 0,
    firstViolation: null,
    promptness: { returned: 5, heldLate: 2, steps: { p50: 1, p99: 4, max: 6 }, ms: { p50: 0.1, p99: 0.4, max: 0.6 }, meanSteps: 1.5 },
    lateMeanSteps: 1.5,
    events: {},
    stats: COUNTERS,
    zerocopyCompletions: 8,
    copiedCompletions: 2,
    wallMs: 20,
    steps: 100,
    virtualMs: 10,
    notes: [],
    ...over,
  };
}

const DESIGN: LabDesign = { name: 'rusty', design: rusty, expectedSound: true, bookkeeping: { perPage: 0, perSkb: 16 }, source: null };

test('counters become per-packet costs: every *Allocs, every *Gets/*Puts/*Refs, every kind of callback', (t) => {
  t.is(sumCounters(COUNTERS, ALLOC_COUNTERS), 10);
  t.is(sumCounters(COUNTERS, REFOP_COUNTERS), 10);
  t.is(sumCounters(COUNTERS, CALLBACK_COUNTERS), 2);
  for (const k of ['tokensFinished', 'pageReleases', 'zerocopySuccess', 'zerocopyFail', 'zccdCalls', 'ownerCallbacks']) {
    t.is(sumCounters({ ...COUNTERS, [k]: 10 }, CALLBACK_COUNTERS), 12, k);
  }
  t.is(sumCounters({ designRefOps: 3 }, REFOP_COUNTERS), 3);
  t.is(sumCounters({ hashLookups: 3, netPageCallbacks: 1 }, REFOP_COUNTERS), 0);
  const r = toResult(DESIGN, 'tap', measureOf());
  t.like(r, {
    design: 'rusty',
    workload: 'tap',
    allocsPerPacket: 1,
    refOpsPerPacket: 1,
    callbacksPerPacket: 0.2,
    copiedBytesPerByte: 0.05,
    pps: 500,
    lateP99: 4,
    heldLateShare: 0.4,
    copiedCompletionShare: 0.25,
    pageGetsPerGrant: 0.8,
    bookkeepingBytesPerSkb: 16,
    safe: true,
  });
  t.false(toResult(DESIGN, 'tap', measureOf({ leaks: 1 })).safe);
  t.false(toResult(DESIGN, 'tap', measureOf({ otherFailures: 1 })).safe);
  const ops = toResult(DESIGN, 'fuzz', measureOf({ promptness: null }));
  t.like(ops, { lateP99: null, heldLate: null, lateMeanSteps: 1.5 });
});

test('relative throughput divides by the baseline on the same workload, null without one', (t) => {
  const rows = [
    toResult(DESIGN, 'tap', measureOf({ wallMs: 20 })),
    toResult({ ...DESIGN, name: 'naive' }, 'tap', measureOf({ wallMs: 40 })),
    toResult({ ...DESIGN, name: 'naive' }, 'flood', measureOf()),
  ];
  const out = withRelativeThroughput(rows, 'rusty');
  t.deepEqual(
    out.map((r) => r.relativeThroughput),
    [1, 0.5, null],
  );
});

// ---- the claims' rules -----------------------------------------------------------------------------------------

function rowOf(design: string, workload: string, over: Partial<LabResult> = {}): LabResult {
  return { ...toResult({ ...DESIGN, name: design }, workload, measureOf()), ...over };
}

function claim(claims: readonly Claim[], id: string): Claim {
  const c = claims.find((x) => x.id === id);
  if (c === undefined) throw new Error(`no claim ${id}`);
  return c;
}

const claimsOf = (results: LabResult[], designs: LabDesign[] = []): Claim[] => measureClaims({ results, designs, seed: 1, timing: false, probeDraws: 4 });

test('every claim row has the claim, its source, a rule and a verdict; without inputs it says what is missing', (t) => {
  const cs = claimsOf([]);
  t.true(cs.length >= 8);
  for (const c of cs) {
    t.true(c.claim.length > 0 && c.source.length > 0 && c.rule.length > 0, c.id);
    t.regex(c.verdict, /^not measured: /, c.id);
  }
  t.is(claim(cs, 'tcp-refs').verdict, 'not measured: workload tcp-loss is not in this run');
  t.is(claim(cs, 'hash-vs-copy').verdict, 'not measured: timed loops were skipped');
  t.is(claim(cs, 'bare-destructor').verdict, 'not measured: design naive is not in this run');
  t.is(claim(cs, 'token-alloc').verdict, 'not measured: designs token and token-alloc are not both in this run');
  t.is(claim(cs, 'struct-page').verdict, 'not measured: design net_priv is not in this run');
  t.is(claim(cs, 'mainline-copies').verdict, 'not measured: design ubuf with workload tap or flood is not in this run');
  t.is(claim(cs, 'bare-chain-late').verdict, 'not measured: design rusty with a system workload is not in this run');
  t.is(claim(cs, 'rusty-page').verdict, 'not measured: design rusty-page with a system workload is not in this run');
});

test('tcp-refs: 20 gets per grant in tcp-loss holds, fewer does not; measured with rusty, else the first safe design', (t) => {
  const tcp = (g: number, d = 'rusty', over: Partial<LabResult> = {}): LabResult => rowOf(d, 'tcp-loss', { pageGetsPerGrant: g, ...over });
  t.is(claim(claimsOf([tcp(20)]), 'tcp-refs').verdict, 'holds');
  t.is(claim(claimsOf([tcp(19.9)]), 'tcp-refs').verdict, 'does not hold');
  t.is(claim(claimsOf([tcp(30, 'naive', { safe: false }), tcp(3)]), 'tcp-refs').figures['getsPerGrant'], 3);
  t.is(claim(claimsOf([tcp(30, 'naive', { safe: false }), tcp(4, 'ubuf')]), 'tcp-refs').figures['getsPerGrant'], 4);
  t.regex(claim(claimsOf([tcp(3)]), 'tcp-refs').measured, /^3 get_page and 1 put_page per mapped grant \(rusty, tcp-loss, 5 grants; /);
});

test('mainline-copies: 95% copied completions under both tap and flood hold; one of them holds only there', (t) => {
  const ubuf = (w: string, s: number): LabResult => rowOf('ubuf', w, { copiedCompletionShare: s, completions: 100 });
  const v = (rows: LabResult[]): string => claim(claimsOf(rows), 'mainline-copies').verdict;
  t.is(v([ubuf('tap', 1), ubuf('flood', 0.95)]), 'holds');
  t.is(v([ubuf('tap', 1), ubuf('flood', 0.5)]), 'holds only with a tap');
  t.is(v([ubuf('tap', 0.2), ubuf('flood', 0.99)]), 'holds only for floods');
  t.is(v([ubuf('tap', 0.2), ubuf('flood', 0.2)]), 'does not hold');
  t.is(v([ubuf('tap', 1)]), 'holds for taps (floods not run)');
});

test('struct-page: the net_priv pointer in every struct page against 0.2% of RAM, with each design\'s bookkeeping', (t) => {
  const np = (perPage: number): LabDesign => ({ name: 'net_priv', design: rusty, expectedSound: true, bookkeeping: { perPage, perSkb: 0 }, source: null });
  t.is(claim(claimsOf([], [np(8)]), 'struct-page').verdict, 'holds');
  t.is(claim(claimsOf([], [{ ...np(8), bookkeeping: null }]), 'struct-page').verdict, 'not measured: net_priv declares no bookkeeping figure');
  t.regex(claim(claimsOf([], [np(16)]), 'struct-page').measured, /^the net_priv pointer adds 8 bytes to every struct page = 0\.195% of RAM \(12\.5% growth of a 64-byte struct page\); declared bookkeeping per tracked page: net_priv 16 B$/);
});

test('bare-chain-late and rusty-page: 10% held late for rusty holds; rusty-page must be safe and at most 1% late', (t) => {
  const late = (d: string, w: string, s: number, over: Partial<LabResult> = {}): LabResult => rowOf(d, w, { heldLateShare: s, ...over });
  const cs = claimsOf([late('rusty', 'tap', 0.02), late('rusty', 'tcp-loss', 0.1), late('rusty-page', 'tap', 0), late('rusty-page', 'tcp-loss', 0.01)]);
  t.is(claim(cs, 'bare-chain-late').verdict, 'holds');
  t.is(claim(cs, 'rusty-page').verdict, 'holds');
  t.is(claim(claimsOf([late('rusty', 'tap', 0.09)]), 'bare-chain-late').verdict, 'does not hold');
  t.is(claim(claimsOf([late('rusty-page', 'tap', 0.011)]), 'rusty-page').verdict, 'does not hold');
  t.is(claim(claimsOf([late('rusty-page', 'tap', 0, { safe: false })]), 'rusty-page').verdict, 'does not hold');
});

test('bare-destructor: the probes catch naive in expand_head and pull_tail and never rusty; a sound "naive" does not hold', (t) => {
  const d = (name: string, design = rusty): LabDesign => ({ name, design, expectedSound: true, bookkeeping: null, source: null });
  const real = claim(claimsOf([], [d('rusty'), d('naive', naive)]), 'bare-destructor');
  t.is(real.verdict, 'holds');
  t.true(real.figures['naive.expand_head']! > 0 && real.figures['naive.pull_tail']! > 0);
  t.is(real.figures['rusty.earlyReturns'], 0);
  t.is(claim(claimsOf([], [d('naive', rusty)]), 'bare-destructor').verdict, 'does not hold');
  // A "rusty" that is really naive breaks the second half of the rule.
  t.is(claim(claimsOf([], [d('rusty', naive), d('naive', naive)]), 'bare-destructor').verdict, 'does not hold');
});

test('probes are reproducible by seed', (t) => {
  t.deepEqual(probeOps(naive, 9, 6), probeOps(naive, 9, 6));
});

// ---- the op-sequence workload's design wrapper ------------------------------------------------------------------

test('the observed design behaves exactly like the design and counts builds, bytes and completions', (t) => {
  for (const [design, seed] of [
    [rusty, 3],
    [naive, 4],
    [rusty, 5],
  ] as const) {
    const ops = opsForSeed(seed);
    const obs = new BuildObserver();
    const wrapped = observedDesign(design, obs);
    const plain = executeOps(ops, { design, trace: true });
    const seen = executeOps(ops, { design: wrapped, trace: true });
    t.deepEqual(seen, plain, `seed ${seed}`);
    t.is(wrapped.name, design.name);
    const builds = ops.filter((o) => o.op === 'build').length;
    t.true(obs.packets > 0 && obs.packets <= builds, `seed ${seed}: ${obs.packets} of ${builds}`);
    t.true(obs.completions <= obs.packets);
  }
});

test('the breaking op is the one at the step the first violation names, else the last', (t) => {
  const ops = opsForSeed(1).slice(0, 4);
  t.is(breakingOp(ops, 'early return of gref 3 (domid 1, page 2) at step 2: still reachable'), formatOp(ops[1]!));
  t.is(breakingOp(ops, 'step 3: data mismatch: #1 len is 3'), formatOp(ops[2]!));
  t.is(breakingOp(ops, 'leak of gref 3 (domid 1, page 2): mapped at step 1, unreachable and not returned at quiescence (step 9)'), formatOp(ops[0]!));
  t.is(breakingOp(ops, 'teardown threw: boom'), formatOp(ops[3]!));
  t.is(breakingOp([], 'x'), 'none');
});

test('two runs measured the same when all but their wall-clock time agree', (t) => {
  t.true(sameFigures(measureOf({ wallMs: 1 }), measureOf({ wallMs: 2 })));
  t.false(sameFigures(measureOf(), measureOf({ packets: 11 })));
  t.false(sameFigures(measureOf(), measureOf({ stats: { ...COUNTERS, pageGets: 5 } })));
});

test('timing passes alternate the design order and each row keeps its best (shortest) data-path time', (t) => {
  const designs = labDesigns().filter((d) => d.name === 'rusty' || d.name === 'naive');
  const seen: { pass: number; design: string; wallMs: number }[] = [];
  const report = runLab(
    { designs, workloads: WORKLOADS.filter((w) => w.name === 'fuzz'), seconds: 0.02, seed: 3, timing: false, warmup: false, probeDraws: 2, speedPasses: 3 },
    (p) => seen.push({ pass: p.pass, design: p.result.design, wallMs: p.result.wallMs }),
  );
  t.deepEqual(
    seen.map((s) => `${s.pass}:${s.design}`),
    ['1:rusty', '1:naive', '2:naive', '2:rusty', '3:rusty', '3:naive'],
  );
  for (const r of report.results) {
    t.is(r.wallMs, Math.min(...seen.filter((s) => s.design === r.design).map((s) => s.wallMs)), r.design);
    t.deepEqual(r.notes, []);
  }
  t.throws(() => runLab({ designs, workloads: [], seconds: 1, seed: 1, speedPasses: 0 }), { message: 'speedPasses must be a positive integer but got 0' });
});

test('hash-vs-copy prices the lookups net_priv-hash made per grant, else two per get_page', (t) => {
  const tcp = rowOf('rusty', 'tcp-loss', { pageGetsPerGrant: 3 });
  const withHash = rowOf('net_priv-hash', 'tcp-loss', { grants: 10, counters: { hashLookups: 70 } });
  const all = measureClaims({ results: [tcp, withHash], designs: [], seed: 1, timing: true, probeDraws: 1 });
  const only = measureClaims({ results: [tcp], designs: [], seed: 1, timing: true, probeDraws: 1 });
  t.is(claim(all, 'hash-vs-copy').figures['lookupsPerPage'], 7);
  t.is(claim(only, 'hash-vs-copy').figures['lookupsPerPage'], 6);
  const c = claim(only, 'hash-vs-copy');
  const { lookupNs, copyNs } = c.figures as { lookupNs: number; copyNs: number };
  t.true(lookupNs > 0 && copyNs > 0);
  t.is(c.verdict, 6 * lookupNs >= copyNs / 2 ? 'holds' : `holds only when a page is looked up at least ${Math.ceil(copyNs / (2 * lookupNs))} times (measured: 6)`);
});

test('the op-sequence workload adds up the stack counters of every run', (t) => {
  const d: LabDesign = { name: 'rusty', design: rusty, expectedSound: true, bookkeeping: null, source: null };
  const both = runOps(d, 2, 7);
  const a = runOps(d, 1, 7);
  const b = runOps(d, 1, 8);
  t.true((both.stats['skbAllocs'] ?? 0) > 0);
  for (const k of Object.keys(both.stats)) t.is(both.stats[k], (a.stats[k] ?? 0) + (b.stats[k] ?? 0), k);
  t.is(both.packets, a.packets + b.packets);
});

test('op sequences count a packet as completed when its last page is back, and as copied when a page came back copied', (t) => {
  const ubuf = labDesigns().find((d) => d.name === 'ubuf')!;
  const u = runOps(ubuf, 40, 1);
  t.true(u.copiedCompletions > 0 && u.copiedCompletions < u.zerocopyCompletions, `${u.copiedCompletions} of ${u.zerocopyCompletions}`);
  const r = runOps({ name: 'rusty', design: rusty, expectedSound: true, bookkeeping: null, source: null }, 40, 1);
  t.is(r.copiedCompletions, 0);
  // Every packet with mapped pages completes once all of them are back (the runs end quiescent).
  t.true(r.zerocopyCompletions > 0 && r.zerocopyCompletions <= r.packets);
});

test('the wrapper completes a packet at its last page and passes every release through unchanged', (t) => {
  const released: [number, boolean | undefined][] = [];
  const sink = { release: (p: Page, ok?: boolean) => void released.push([p.id, ok]) };
  let given: { pages: readonly Page[]; sink: { release(p: Page, ok?: boolean): void } } | null = null;
  const inner = { ...rusty, attach: (_s: SkBuff, pages: readonly Page[], s: typeof sink) => void (given = { pages, sink: s }) };
  const obs = new BuildObserver();
  const w = observedDesign(inner, obs);
  const skb = { ctx: {}, len: 300 } as unknown as SkBuff;
  w.attach(skb, [page(1), page(2)], sink);
  t.deepEqual({ packets: obs.packets, bytes: obs.bytes, pages: obs.pages }, { packets: 1, bytes: 300, pages: 2 });
  given!.sink.release(page(2), false);
  t.is(obs.completions, 0, 'one page is still out');
  given!.sink.release(page(1));
  t.deepEqual({ done: obs.completions, copied: obs.copiedCompletions }, { done: 1, copied: 1 });
  t.deepEqual(released, [
    [2, false],
    [1, undefined],
  ]);
});
