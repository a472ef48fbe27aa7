import test from 'ava';
import { fc, testProp } from '@fast-check/ava';
import { getPage, type Page } from '../../backend/page.js';
import { naive, rusty, type GrantSink, type ReleaseDesign } from '../../backend/release.js';
import type { SkBuff } from '../../backend/skbuff.js';
import { Random } from '../../shared/random.js';
import { opListArb, opRecordArb } from '../../tools/fuzz/arbitrary.js';
import { executeOps } from '../../tools/fuzz/executor.js';
import { generateOps, isOpRecord, MAX_OPS, MIN_OPS, OP_KINDS, type OpRecord } from '../../tools/fuzz/ops.js';
import { opsForSeed, runFuzz } from '../../tools/fuzz/runner.js';
import { shrinkOps } from '../../tools/fuzz/shrink.js';

/** rusty with one hook replaced: a deliberately broken design or sink. */
function variant(name: string, attach: (skb: SkBuff, pages: readonly Page[], sink: GrantSink) => void): ReleaseDesign {
  return {
    name,
    attach,
    refDataParent: (parent, child, op) => rusty.refDataParent(parent, child, op),
    mayMoveFrags: (from, to) => rusty.mayMoveFrags(from, to),
  };
}

// A netback skb with mapped foreign frags (b & 7 !== 0 and !== 1; c % 20 in [5, 13) gives 1-4 slots of up to 1500 B).
const BUILD: OpRecord = { op: 'build', a: 7, b: 2, c: 9 };
const BIG_BUILD: OpRecord = { op: 'build', a: 11, b: 2, c: 17 }; // 2-9 slots of up to 4096 B

testProp(
  'rusty: random op sequences give no early/double return, no leak, no data mismatch and no error',
  [opListArb(40)],
  (t, ops) => {
    const r = executeOps(ops, { design: rusty });
    t.deepEqual(r.messages, []);
    t.is(r.violations, 0);
  },
  { numRuns: 400 },
);

test('the naive design is caught by both detectors: the oracle (early returns) and the poisoned bytes (data mismatches)', (t) => {
  const s = runFuzz({ runs: 150, seed: 1, design: naive });
  t.true(s.earlyReturns > 0);
  t.true(s.dataMismatches > 0);
  t.true(s.violations >= s.earlyReturns + s.dataMismatches);
  t.not(s.firstFailingSeed, null);
  const f = s.firstFailure!;
  // The seed replays the failing run exactly, and the shrunk sequence still fails the same way.
  const again = executeOps(opsForSeed(s.firstFailingSeed!), { design: naive });
  t.deepEqual(again, f.result);
  t.true(f.shrunk.length <= f.ops.length);
  t.true(f.shrunkResult.violations > 0);
  t.is(f.shrunkResult.firstKind, f.result.firstKind);
  t.is(f.shrunkResult.trace.length, f.shrunk.length);
});

test('naive: pskb_expand_head of a netback skb (Herbert Xu\'s objection) returns its grants while the new shinfo still maps them', (t) => {
  // Two ops: build, then pskb_expand_head gives the skb a private shinfo; naive lets the old shinfo's destructor fire.
  const ops: OpRecord[] = [BUILD, { op: 'expand_head', a: 0, b: 0, c: 0 }];
  const bad = executeOps(ops, { design: naive });
  t.true(bad.earlyReturns > 0);
  t.is(bad.firstKind, 'early-return');
  t.regex(bad.messages[0]!, /^early return of gref \d+ \(domid 1, page \d+\) at step 2: still reachable from root 0 frags\[\d+\]$/);
  t.is(executeOps(ops, { design: rusty }).violations, 0);
});

test('a sink that hands pages back at attach time is caught as early returns (and the guest poison shows up)', (t) => {
  const eager = variant('eager', (skb, pages, sink) => {
    rusty.attach(skb, pages, sink);
    for (const p of pages) sink.release(p);
  });
  const r = executeOps([BIG_BUILD, { op: 'clone', a: 0, b: 0, c: 0 }, { op: 'free', a: 0, b: 0, c: 0 }], { design: eager });
  t.true(r.earlyReturns > 0);
  t.true(r.dataMismatches > 0);
  t.is(r.firstKind, 'early-return');
});

test('a sink that hands every page back twice is caught as double returns only', (t) => {
  const twice = variant('twice', (skb, pages, sink) =>
    rusty.attach(skb, pages, {
      release(p) {
        sink.release(p);
        sink.release(p);
      },
    }),
  );
  const r = executeOps([BIG_BUILD, { op: 'pskb_copy', a: 0, b: 0, c: 0 }, { op: 'free', a: 0, b: 0, c: 0 }], { design: twice });
  t.true(r.doubleReturns > 0);
  t.is(r.earlyReturns, 0);
  t.is(r.firstKind, 'double-return');
  t.regex(r.messages[0]!, /^double return of gref \d+ \(domid 1, page \d+\) at step \d+: it was already handed back$/);
});

test('a sink that never hands pages back is caught as leaks at quiescence', (t) => {
  const never = variant('never', (skb, pages) => rusty.attach(skb, pages, { release: () => undefined }));
  const r = executeOps([BUILD, BIG_BUILD], { design: never });
  t.true(r.leaks > 0);
  t.is(r.earlyReturns + r.doubleReturns + r.dataMismatches, 0);
  t.regex(r.messages[0]!, /^leak of gref \d+ \(domid 1, page \d+\): mapped at step [12], unreachable and not returned at quiescence \(step 3\)$/);
});

test('a stack that leaks a page reference is caught when the grant comes back', (t) => {
  const pinning = variant('pinning', (skb, pages, sink) => {
    rusty.attach(skb, pages, sink);
    for (const p of pages) getPage(skb.ctx, p); // a get_page nobody puts
  });
  const r = executeOps([BUILD, { op: 'free', a: 0, b: 0, c: 0 }], { design: pinning });
  t.true(r.errors > 0);
  t.is(r.earlyReturns + r.doubleReturns + r.leaks, 0);
  t.regex(r.messages[0]!, /^step 2: page \d+ came back unreachable but still holds 1 stack page references$/);
});

test('a mechanism that reads the wrong bytes is caught by the content model', (t) => {
  const skew = variant('skew', (skb, pages, sink) => {
    rusty.attach(skb, pages, sink);
    const f = skb.shinfo.frags[0];
    if (skb.shinfo.nrFrags > 0 && f !== undefined) f.offset += f.offset > 0 ? -1 : 1;
  });
  const r = executeOps([{ op: 'build', a: 5, b: 2, c: 9 }], { design: skew });
  t.is(r.dataMismatches, 1);
  t.regex(r.messages[0]!, /^step 1: data mismatch: #0 byte \d+ of \d+ reads 0x[0-9a-f]{2} but the model has 0x[0-9a-f]{2} \(step 1\)$/);
  t.is(r.earlyReturns + r.doubleReturns + r.leaks, 0);
});

test('a mechanism that gets len wrong is caught even when every byte it has matches', (t) => {
  // One extra linear byte: tail and len grow together, so the structure stays consistent and a prefix compare passes.
  const longer = variant('longer', (skb, pages, sink) => {
    rusty.attach(skb, pages, sink);
    skb.tail += 1;
    skb.len += 1;
  });
  const r = executeOps([BUILD], { design: longer });
  t.is(r.dataMismatches, 1);
  t.regex(r.messages[0]!, /^step 1: data mismatch: #0 len is (\d+) but the model has \d+ bytes$/);
  const [, got, want] = /len is (\d+) but the model has (\d+)/.exec(r.messages[0]!)!;
  t.is(Number(got), Number(want) + 1);
});

test('an op that throws ends the run as an error with the step and op', (t) => {
  const broken = variant('broken', () => {
    throw new Error('attach exploded');
  });
  const r = executeOps([BUILD, BUILD], { design: broken });
  t.is(r.errors, 1);
  t.is(r.steps, 1);
  t.is(r.firstKind, 'error');
  t.true(r.messages[0]!.startsWith('step 1 (build a=7 b=2 c=9) threw: Error: attach exploded'));
});

testProp('executing the same op list twice gives the same result (runs are replayable)', [fc.array(opRecordArb, { maxLength: 30 })], (t, ops) => {
  t.deepEqual(executeOps(ops, { design: naive, trace: true }), executeOps(ops, { design: naive, trace: true }));
}, { numRuns: 60 });

test('seeded op lists: deterministic, MIN_OPS..MAX_OPS long, starting with two builds, valid records', (t) => {
  for (let seed = 0; seed < 200; seed++) {
    const a = generateOps(new Random(seed));
    t.deepEqual(a, generateOps(new Random(seed)));
    t.true(a.length >= MIN_OPS && a.length <= MAX_OPS);
    t.is(a[0]!.op, 'build');
    t.is(a[1]!.op, 'build');
    for (const op of a) t.true(isOpRecord(JSON.parse(JSON.stringify(op))));
  }
  const kinds = new Set(Array.from({ length: 200 }, (_, s) => generateOps(new Random(s)).map((o) => o.op)).flat());
  t.deepEqual([...kinds].sort(), [...OP_KINDS].sort());
  t.false(isOpRecord({ op: 'nope', a: 0, b: 0, c: 0 }));
  t.false(isOpRecord({ op: 'build', a: -1, b: 0, c: 0 }));
});

testProp(
  'the shrinker finds the two ops a failure needs and zeroes the parameters it does not need',
  [fc.array(opRecordArb, { maxLength: 40 }), fc.nat(40), fc.nat(40)],
  (t, noise, i, j) => {
    // Fails iff a clone comes before a free with an odd b: a two-op failure buried in noise.
    const clean = noise.filter((o) => o.op !== 'clone' && o.op !== 'free');
    const ops = clean.slice();
    const x = Math.min(i, ops.length);
    ops.splice(x, 0, { op: 'clone', a: 5, b: 6, c: 7 });
    ops.splice(Math.max(x + 1, Math.min(j, ops.length)), 0, { op: 'free', a: 1, b: 3, c: 9 });
    const fails = (cand: readonly OpRecord[]): boolean => {
      const c = cand.findIndex((o) => o.op === 'clone');
      return c >= 0 && cand.slice(c + 1).some((o) => o.op === 'free' && o.b % 2 === 1);
    };
    const s = shrinkOps(ops, fails);
    t.deepEqual(s.ops, [
      { op: 'clone', a: 0, b: 0, c: 0 },
      { op: 'free', a: 0, b: 3, c: 0 },
    ]);
  },
  { numRuns: 100 },
);

test('the shrinker stops after maxTries executions', (t) => {
  let calls = 0;
  const ops = Array.from({ length: 50 }, (_, i): OpRecord => ({ op: 'build', a: i, b: 1, c: 1 }));
  const s = shrinkOps(ops, () => (calls++, true), 7);
  t.is(calls, 7);
  t.is(s.tries, 7);
});
