// The fuzzer (tools/fuzz: oracle + poisoned guest pages + content model) against every design: short properties
// for the designs that should pass it (one guest: the token designs' cross-guest flaw needs two), zccd's failures
// traced to the two operations its patch does not cover, and promptness (late page-steps) of the chain designs
// against the per-page ones.
import test from 'ava';
import { fc, testProp } from '@fast-check/ava';
import { DESIGNS, designByName, type DesignInfo } from '../../backend/release.js';
import { executeOps } from '../../tools/fuzz/executor.js';
import { opsForSeed, runFuzz } from '../../tools/fuzz/runner.js';

const byName = (n: string): DesignInfo => designByName(n)!;

/** Designs the single-guest fuzzer must find clean: the sound ones plus those unsound only across guests. */
const FUZZ_CLEAN = DESIGNS.filter((d) => d.unsoundCases.every((c) => c === 'coalesce across guests'));

test('the fuzz-clean list is every design but naive and zccd', (t) => {
  t.deepEqual(
    DESIGNS.filter((d) => !FUZZ_CLEAN.includes(d)).map((d) => d.name),
    ['naive', 'zccd'],
  );
});

for (const design of FUZZ_CLEAN) {
  testProp(
    `${design.name}: seeded fuzz runs give no early/double return, leak, data mismatch or error`,
    [fc.integer({ min: 0, max: 0xffffffff })],
    (t, seed) => {
      const s = runFuzz({ runs: 40, seed, design, shrink: false });
      t.deepEqual(s.firstFailure?.result.messages ?? [], []);
      t.is(s.violations, 0);
    },
    { numRuns: 3 },
  );
}

test('zccd: the fuzzer finds early returns, and they all come from skb_split and skb_segment', (t) => {
  const zccd = byName('zccd');
  const s = runFuzz({ runs: 300, seed: 1, design: zccd });
  t.true(s.earlyReturns > 0);
  const shrunkOps = s.firstFailure!.shrunk.map((o) => o.op);
  t.true(shrunkOps.includes('split') || shrunkOps.includes('segment'), shrunkOps.join(' '));
  // The same op lists without the two uncovered operations are clean.
  let violations = 0;
  for (let seed = 1; seed <= 300; seed++) {
    const ops = opsForSeed(seed).filter((o) => o.op !== 'split' && o.op !== 'segment');
    violations += executeOps(ops, { design: zccd }).violations;
  }
  t.is(violations, 0);
});

test('promptness: rusty-page and page-destructor leave no page late; the per-packet designs do', (t) => {
  const late = (name: string): number => runFuzz({ runs: 200, seed: 1, design: byName(name), shrink: false }).lateTotal;
  const rusty = late('rusty');
  t.true(rusty > 0);
  t.is(late('rusty-page'), 0);
  t.is(late('page-destructor'), 0);
  t.true(late('net_priv') > 0);
  t.true(late('token') >= late('net_priv'), 'finish order adds head-of-line waiting to per-packet completion');
});
