// The malicious-guest catalogue played against the simulated world (extra hostile domains next to the honest guests,
// after the traffic and its faults): every case handled, no backend crash, the honest guests' audit clean; and the
// whole thing is as deterministic as the rest of the run.
import test from 'ava';
import { ADVERSARY_CASES } from '../../../frontend/adversary.js';
import { runSim } from '../../../tools/sim/run.js';

test('adversary: the whole catalogue against the world after a run with faults: all handled, no crash, audit clean', async (t) => {
  const r = await runSim({ seed: 7, seconds: 4, guests: 3, adversary: true });
  t.deepEqual(r.adversaryFailures, []);
  t.true(r.adversary.cases >= 25);
  t.deepEqual(r.adversary, { cases: ADVERSARY_CASES.length, handled: ADVERSARY_CASES.length, backendCrashes: 0 });
  t.deepEqual(r.errors, []);
  t.true(r.clean, JSON.stringify(r.audit));
  for (const c of ADVERSARY_CASES) t.regex(r.eventLog, new RegExp(`\\n\\S+ adversary ${c.name} handled=1 crashed=0\\n`));
});

test('adversary: the same seed plays the same cases the same way (byte-identical logs)', async (t) => {
  const cases = ADVERSARY_CASES.filter((_, i) => i % 11 === 0);
  const o = { seed: 9, seconds: 2, guests: 2, schedule: [], adversary: true, adversaryCases: cases };
  const a = await runSim(o);
  const b = await runSim(o);
  t.is(a.eventLog, b.eventLog);
  t.is(a.adversary.cases, cases.length);
  t.is(a.adversary.handled, cases.length);
});

test('without adversary: no case is played', async (t) => {
  const r = await runSim({ seed: 9, seconds: 1, guests: 1, schedule: [] });
  t.deepEqual(r.adversary, { cases: 0, handled: 0, backendCrashes: 0 });
  t.notRegex(r.eventLog, / adversary /);
});
