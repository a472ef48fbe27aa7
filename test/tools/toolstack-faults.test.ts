// The toolstack under faults: what is stuck is reported, and nothing waits forever.
import test from 'ava';
import { Toolstack } from '../../tools/toolstack.js';

test('a guest whose grants never come back is reported outstanding at its deadline, and nothing hangs', async (t) => {
  const started = performance.now();
  // The uplink completes nothing and the drain aborts nothing: frames to the remote host keep their grants.
  const ts = await Toolstack.boot({
    guests: 1,
    seconds: 0.3,
    mtu: 1500,
    loss: 0,
    tap: false,
    pcapPath: null,
    seed: 4,
    traffic: 'fixed',
    fixedSize: 1000,
    faults: { nicStallMs: 1e9, noDrainAbort: true },
    drainTimeoutMs: 200,
    returnDeadlineMs: 300,
    closeStepTimeoutMs: 300,
  });
  t.teardown(() => ts.close());
  const r = await ts.run();
  const g = r.perGuest[0]!;
  t.true(g.outstanding > 0, 'the stuck grants are counted');
  t.is(r.audit.outstanding, g.outstanding);
  t.true(g.notes.some((n) => n === `${g.outstanding} grants not returned within 300 ms`), g.notes.join('; '));
  t.false(r.drain!.quiescent);
  // The vif's teardown waits for those grants past its deadline: a hung teardown is an error of the run, with why.
  t.true(r.backend!.errors.some((e) => /^vif 1\/0: teardown did not finish within 300 ms \([1-9]\d* grants still mapped, [1-9]\d* packets in flight\)$/.test(e)), r.backend!.errors.join('; '));
  t.true(r.errors.some((e) => e.startsWith('vif 1/0: teardown did not finish')), r.errors.join('; '));
  // Nothing returned early or twice, and nothing was lost: the oracle still sees the pages in the NIC ring.
  t.is(r.audit.earlyReturns + r.audit.doubleReturns + r.audit.leaked, 0);
  t.true(performance.now() - started < 8000);
});
