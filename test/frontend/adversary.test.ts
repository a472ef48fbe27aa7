// The malicious-guest catalogue against the real netback (one thread, virtual time): one named test per case, the
// whole catalogue on one backend as the stress tool plays it, and tests that the judge itself fails when the backend
// answers otherwise than Linux.
import test from 'ava';
import {
  ADVERSARY_CASES,
  CHECKLIST,
  HostileFront,
  runAdversaryCase,
  runAdversaryCatalogue,
  type AdversaryCase,
  type AdversaryHost,
  type VifStatus,
} from '../../frontend/adversary.js';
import { AdversaryRig } from '../../frontend/adversary-rig.js';
import { DESIGN_NAMES } from '../../backend/release.js';

for (const c of ADVERSARY_CASES) {
  test(`adversary: ${c.name}`, async (t) => {
    const rig = await AdversaryRig.create();
    const r = await runAdversaryCase(c, rig);
    t.true(r.handled, r.detail);
    t.false(r.backendCrashed);
    t.is(r.detail, `${c.expect}: ${c.linux}`);
    // Everything the adversary and the honest guests gave the backend is back: no leak at quiescence.
    const q = await rig.quiesce();
    t.deepEqual(q, { ok: true, value: 0 });
    t.deepEqual(rig.audit().violations, []);
    t.is(rig.dom0.mapper.mappedRefs(rig.adversaryDomids[0]!).length, 0, 'nothing of the adversary is mapped');
  });
}

test('the catalogue: at least 25 named cases covering every checklist item but the control ring', (t) => {
  t.true(ADVERSARY_CASES.length >= 25, `${ADVERSARY_CASES.length} cases`);
  for (const c of ADVERSARY_CASES) t.regex(c.name, /^[a-z0-9]+(-[a-z0-9]+)*$/);
  t.is(new Set(ADVERSARY_CASES.map((c) => c.name)).size, ADVERSARY_CASES.length, 'names are unique');
  const items = new Set<string>(ADVERSARY_CASES.map((c) => c.item));
  t.deepEqual([...items].sort(), Object.values(CHECKLIST).sort(), 'every item played, and only checklist items');
  const answers = new Set(ADVERSARY_CASES.map((c) => c.expect));
  for (const a of ['FATAL', 'ERROR', 'SLOT_ERROR', 'OKAY', 'RX_ERROR', 'DRAIN', 'XENBUS_FATAL', 'RECONNECT', 'UNPLUG', 'IGNORE']) t.true(answers.has(a as AdversaryCase['expect']), a);
});

test('the whole catalogue on ONE backend, one adversary after another (as the stress run plays it): all handled, no crash, no leak', async (t) => {
  const rig = await AdversaryRig.create({ maxAdversaries: ADVERSARY_CASES.length });
  const s = await runAdversaryCatalogue(rig);
  t.deepEqual(
    s.results.filter((r) => !r.handled).map((r) => `${r.name}: ${r.detail}`),
    [],
  );
  t.deepEqual({ cases: s.cases, handled: s.handled, backendCrashes: s.backendCrashes }, { cases: ADVERSARY_CASES.length, handled: ADVERSARY_CASES.length, backendCrashes: 0 });
  t.deepEqual(await rig.quiesce(), { ok: true, value: 0 });
  for (const d of rig.adversaryDomids) t.deepEqual(rig.dom0.mapper.mappedRefs(d), [], `d${d}`);
  t.is(rig.dom0.vifs.length, 2, 'only the honest guests\' vifs are left');
});

// ---- The judge fails when the backend does not answer as Linux ----------------------------------------------

const byName = (name: string): AdversaryCase => {
  const c = ADVERSARY_CASES.find((x) => x.name === name);
  if (c === undefined) throw new Error(`no case ${name}`);
  return c;
};

/** Plays a case for real, then feeds its check a record edited as a wrong backend would have produced it. */
async function judgeEdited(name: string, edit: (played: Record<string, unknown>, f: HostileFront) => void): Promise<string[]> {
  const rig = await AdversaryRig.create();
  const c = byName(name);
  const f = new HostileFront(rig, await rig.createGuest());
  const played = (await c.play(f)) as Record<string, unknown>;
  t0Clean(c.check(f, played), name);
  const copy = structuredClone(played);
  edit(copy, f);
  return c.check(f, copy);
}

function t0Clean(problems: string[], name: string): void {
  if (problems.length > 0) throw new Error(`${name} was not clean before the edit: ${problems.join('; ')}`);
}

const vifEdit = (over: Partial<VifStatus>) => (p: Record<string, unknown>) => {
  p['vif'] = { ...(p['vif'] as VifStatus), ...over };
};

const judgeRows: { name: string; edit: (p: Record<string, unknown>, f: HostileFront) => void; problem: string }[] = [
  { name: 'req-prod-overrun', edit: vifEdit({ disabled: false }), problem: 'vif disabled: expected true but got false' },
  { name: 'gso-size-0', edit: vifEdit({ carrier: true }), problem: 'carrier: expected false but got true' },
  { name: 'extra-type-0', edit: vifEdit({ fatalError: 'Missing extra info' }), problem: 'fatal error: expected "Invalid extra type: 0" but got "Missing extra info"' },
  {
    name: 'slots-22-fatal',
    edit: (p) => {
      p['rspAfterProbe'] = (p['rspAtFatal'] as number) + 1;
    },
    problem: 'responses after the FATAL (rsp_prod)',
  },
  { name: 'slots-20-dropped', edit: vifEdit({ lastTxError: 'Bad packet size: 10' }), problem: 'last TX error: expected "Too many slots (18) exceeding limit (18), dropping packet" but got "Bad packet size: 10"' },
  {
    name: 'frag-larger-than-total',
    edit: (p) => {
      p['delivered'] = 1;
    },
    problem: 'frames verified on the uplink: expected 0 but got 1',
  },
  { name: 'mcast-over-64', edit: vifEdit({ mcastCount: 64 }), problem: 'multicast addresses held: expected 63 but got 64' },
  { name: 'zero-length-frag', edit: vifEdit({ stats: { txZeroLengthSlots: 0 } }), problem: 'txZeroLengthSlots: expected 2 but got 0' },
  {
    name: 'ring-indices-garbage',
    edit: (p) => {
      p['inUse'] = [8];
    },
    problem: 'grants the backend left mapped: expected [] but got [8]',
  },
  {
    name: 'withhold-rx-requests',
    edit: (p) => {
      p['releasedAfterMs'] = 50;
    },
    problem: 'grants came back after 50 ms: before the 10000 ms drain timeout',
  },
  {
    name: 'die-with-grants-mapped',
    edit: (p) => {
      p['raisedAfter'] = (p['raisedAtDeath'] as number) + 1;
    },
    problem: 'events raised on the dead guest',
  },
  {
    name: 'state-flap-in-flight',
    edit: (p) => {
      p['stateWhileDraining'] = 'idle';
    },
    problem: 'vif while the stack still holds the grants: expected "disconnecting" but got "idle"',
  },
  // A premise half met (some grants mapped, some not) is neither a zero-copy nor a copying backend.
  {
    name: 'state-flap-in-flight',
    edit: (p) => {
      p['inFlightAtClosing'] = 2;
    },
    problem: 'packets in flight when Closing was written: expected all 4 or none still mapped but got 2',
  },
  {
    name: 'withhold-rx-requests',
    edit: (p) => {
      p['pinnedOutstanding'] = 3;
    },
    problem: 'honest grants pinned while queued: expected >= 8 (or 0, copied) but got 3',
  },
  // Judged as a copying backend, the guest's scribbles must not reach the wire.
  {
    name: 'mapped-page-rewritten',
    edit: (p) => {
      p['mappedAtAct'] = 0;
    },
    problem: 'frames verified on the uplink: expected 1 but got 0',
  },
];

for (const row of judgeRows) {
  test(`the judge of ${row.name} catches: ${row.problem}`, async (t) => {
    const problems = await judgeEdited(row.name, row.edit);
    t.true(
      problems.some((p) => p.startsWith(row.problem)),
      problems.join('\n'),
    );
  });
}

test('the judge catches a response that never came and a slot answered twice', async (t) => {
  const rig = await AdversaryRig.create();
  const c = byName('gref-invalid');
  const f = new HostileFront(rig, await rig.createGuest());
  const played = await c.play(f);
  t.deepEqual(c.check(f, played), []);
  const ids = (played as { pkt: { ids: number[] } }).pkt.ids;
  // The failed frag answered a second time, OKAY.
  f.txSeen.push({ id: ids[1]!, status: 0 });
  t.deepEqual(c.check(f, played), [`slot statuses: expected [[0],[-1]] but got [[0],[-1,0]]`]);
  f.txSeen.length = 0;
  t.deepEqual(c.check(f, played), ['slot statuses: expected [[0],[-1]] but got [[],[]]']);
});

test('runAdversaryCase reports a case that throws, and a backend that throws, without throwing itself', async (t) => {
  const rig = await AdversaryRig.create();
  const boom: AdversaryCase = {
    name: 'boom',
    item: CHECKLIST.ring,
    expect: 'OKAY',
    linux: 'nothing',
    async play(f) {
      await f.connect();
      // Our own bug in the middle of a play: reported, and the aftermath still runs.
      throw new Error('scripted failure');
    },
    check: () => [],
  };
  const r = await runAdversaryCase(boom, rig);
  t.false(r.handled);
  t.is(r.detail, 'the case threw: scripted failure');
  t.false(r.backendCrashed);
  // A backend whose round throws is a crash, reported by name and counted.
  let calls = 0;
  const broken = new Proxy(rig, {
    get(target, prop) {
      if (prop === 'audit') return () => ({ ...target.audit(), backendError: calls++ === 0 ? null : 'Error: netback: dealloc ring overflow' });
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  }) as AdversaryHost;
  const s = await runAdversaryCatalogue(broken, [byName('runt-total')]);
  t.is(s.backendCrashes, 1);
  t.is(s.handled, 0);
  t.true(s.results[0]!.detail.endsWith('backend threw: Error: netback: dealloc ring overflow'), s.results[0]!.detail);
});

// ---- Found in thread-mode stress runs, where real time passes during a step ---------------------------------

// The tap's window keeps the in-flight frames (and their grants) 500 ms, as the thread-mode host does. The backend
// writes Closing only after the drain (backend_disconnect first), so its state reads Connected throughout: the case
// once took that for the reconnect and gave the second connect 5 ms, and failed every thread-mode run.
test('regression: state-flap-in-flight while a tap holds the in-flight frames 500 ms (the backend stays Connected until drained)', async (t) => {
  const rig = await AdversaryRig.create({ config: { tap: true, tapHoldMs: 500 } });
  const r = await runAdversaryCase(byName('state-flap-in-flight'), rig);
  t.true(r.handled, r.detail);
  t.is(r.premise, 'held', 'the flap happened with the frames in flight');
  t.deepEqual(await rig.quiesce(), { ok: true, value: 0 });
});

// With no completion delay the uplink used to receive the frame before the guest rewrote its page (on real time any
// step can complete it): the case now stalls the uplink itself, so the rewrite always hits a queued, mapped page
// (premise 'held'; were it 'copied', the case would only have shown that a copy keeps the scribbles out).
test('regression: mapped-page-rewritten when the uplink NIC completes at once (nicCompletionDelayMs 0)', async (t) => {
  const rig = await AdversaryRig.create({ config: { nicCompletionDelayMs: 0 } });
  const r = await runAdversaryCase(byName('mapped-page-rewritten'), rig);
  t.true(r.handled, r.detail);
  t.is(r.premise, 'held');
  t.deepEqual(await rig.quiesce(), { ok: true, value: 0 });
});

// ---- Premises: cases whose act needs the guest's pages mapped ------------------------------------------------

const premiseCases = ADVERSARY_CASES.filter((c) => c.premise !== undefined);

test('premise cases: the five acts on frames in flight declare one', (t) => {
  t.deepEqual(premiseCases.map((c) => c.name).sort(), ['die-with-grants-mapped', 'mapped-page-rewritten', 'rewrite-before-response', 'state-flap-in-flight', 'withhold-rx-requests']);
});

// Every design is judged as Linux would run it: a zero-copy design meets its pages mapped (the act is the real
// hazard), grant copy meets copies; either way handled, and the oracle sees no early return.
for (const design of DESIGN_NAMES) {
  test(`premise cases under ${design}: ${design === 'copy' ? 'copied' : 'held'} pages, all handled`, async (t) => {
    for (const c of premiseCases) {
      const rig = await AdversaryRig.create({ config: { design } });
      const r = await runAdversaryCase(c, rig);
      t.true(r.handled, `${c.name}: ${r.detail}`);
      t.is(r.premise, design === 'copy' ? 'copied' : 'held', c.name);
    }
  });
}

// Mainline's skb_clone orphans (copies) zerocopy frags first: under ubuf a tap's clone copies the guest's pages, so
// the acts meet copies; under rusty the tap's clone shares them and the acts meet mapped pages.
test('premise cases with a tap on every port: ubuf meets copied pages, rusty held ones; all handled', async (t) => {
  for (const [design, want] of [['ubuf', 'copied'], ['rusty', 'held']] as const) {
    for (const c of premiseCases) {
      const rig = await AdversaryRig.create({ config: { design, tap: true } });
      const r = await runAdversaryCase(c, rig);
      t.true(r.handled, `${design} ${c.name}: ${r.detail}`);
      t.is(r.premise, want, `${design} ${c.name}`);
    }
  }
});


// Thread mode under ubuf: the honest exchange took 5 rounds, the flood sent 1000 notifications and the case judged
// itself too small to mean anything. The flood now goes on until it is big enough, however fast the exchange.
test('regression: event-flood when the honest exchange is over in one round, the flood still reaches its size', async (t) => {
  const rig = await AdversaryRig.create();
  // Rounds are scarce, as on real time: the exchange is one round, and so is a run with nothing to wait for.
  const oneRound = async (each?: () => void): Promise<void> => {
    each?.();
    await rig.step();
  };
  const fast = Object.create(rig, {
    exchange: {
      value: async (_frames: number, each?: () => void) => {
        await oneRound(each);
        return { ok: true, value: undefined };
      },
    },
    run: {
      value: async (ms: number, until?: () => boolean, each?: () => void) => {
        if (until !== undefined) return rig.run(ms, until, each);
        await oneRound(each);
        return true;
      },
    },
  }) as AdversaryHost;
  const r = await runAdversaryCase(byName('event-flood'), fast);
  t.true(r.handled, r.detail);
});
