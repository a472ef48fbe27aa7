// The audit across incarnations: what a live guest, a dead guest and each backend contribute to the seven figures.
import test from 'ava';
import { simAudit, simAuditClean, type BackendTally, type GuestTally } from '../../../tools/sim/audit.js';

const guest = (over: Partial<GuestTally>): GuestTally => ({
  dead: false,
  granted: 0,
  returned: 0,
  reclaimed: 0,
  outstanding: 0,
  stuck: 0,
  stillMapped: 0,
  endAccessFailures: 0,
  badGrantReturns: 0,
  corruptPayloads: 0,
  ...over,
});
const backend = (over: Partial<BackendTally>): BackendTally => ({ earlyReturns: 0, doubleReturns: 0, leaks: 0, corruptPayloads: 0, ...over });

test('a live guest: returned counts grants handed back and grants reclaimed at a disconnect', (t) => {
  const a = simAudit([guest({ granted: 100, returned: 90, reclaimed: 10 })], [backend({})]);
  t.deepEqual(a, { granted: 100, returned: 100, outstanding: 0, leaked: 0, earlyReturns: 0, doubleReturns: 0, corruptPayloads: 0 });
  t.true(simAuditClean(a));
});

test('a dead guest: what it had out at death comes back once nothing maps it; a still-mapped entry is a leak', (t) => {
  const released = simAudit([guest({ dead: true, granted: 50, returned: 40, outstanding: 10 })], []);
  t.is(released.returned, 50);
  t.is(released.outstanding, 0);
  t.true(simAuditClean(released));
  const pinned = simAudit([guest({ dead: true, granted: 50, returned: 40, outstanding: 10, stillMapped: 3 })], []);
  t.is(pinned.returned, 40);
  t.is(pinned.outstanding, 10);
  t.is(pinned.leaked, 3);
  t.false(simAuditClean(pinned));
});

test('a live guest\'s stuck pages at the end are leaks; its early and double returns and corrupt payloads add up', (t) => {
  const a = simAudit([guest({ granted: 5, returned: 3, outstanding: 2, stuck: 2, endAccessFailures: 1, badGrantReturns: 2, corruptPayloads: 3 })], []);
  t.deepEqual(a, { granted: 5, returned: 3, outstanding: 2, leaked: 2, earlyReturns: 1, doubleReturns: 2, corruptPayloads: 3 });
});

test('every backend incarnation\'s oracle and uplink figures are summed', (t) => {
  const a = simAudit([], [backend({ earlyReturns: 1, corruptPayloads: 2 }), backend({ doubleReturns: 3, leaks: 4 })]);
  t.deepEqual(a, { granted: 0, returned: 0, outstanding: 0, leaked: 4, earlyReturns: 1, doubleReturns: 3, corruptPayloads: 2 });
});

test('simAuditClean: any one failure figure fails it; granted and returned alone do not', (t) => {
  const clean = { granted: 9, returned: 9, outstanding: 0, leaked: 0, earlyReturns: 0, doubleReturns: 0, corruptPayloads: 0 };
  t.true(simAuditClean(clean));
  for (const k of ['outstanding', 'leaked', 'earlyReturns', 'doubleReturns', 'corruptPayloads'] as const) t.false(simAuditClean({ ...clean, [k]: 1 }), k);
});
