// runSim as the stress tool uses it: one seed, one execution (byte-identical logs and reports), a schedule with
// every fault type recovered from with a clean audit, a thread-mode schedule replayed from its text, exact option
// errors, and the negative control (the naive release design) caught.
import test from 'ava';
import { FAULT_TYPES, parseFaultSchedule, type FaultEvent } from '../../../tools/sim/faults.js';
import { runSim, type SimReport } from '../../../tools/sim/run.js';

/** Every fault type once in 7 s, 3 guests (kills spaced so each recovers before the next). */
const ALL_FAULTS_TEXT = [
  '500 event-storm g=1 dur=300 n=64',
  '900 loss dur=600 p=0.2',
  '1000 tap-hold dur=500 hold=400',
  '1200 revoke-mapped g=2 n=4',
  '1700 nic-stall dur=200',
  '2000 slow-receiver g=3 dur=800 every=10',
  '2100 stalled-receiver g=1 dur=1500',
  '3000 guest-kill g=2 restart=400',
  '5000 backend-kill release=100 restart=400',
].join('\n');

function schedule(text: string): FaultEvent[] {
  const r = parseFaultSchedule(text);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

const ALL = { seed: 7, seconds: 7, guests: 3, schedule: schedule(ALL_FAULTS_TEXT), rxDrainTimeoutMs: 500 };
const GEN = { seed: 11, seconds: 6, guests: 3 };

// Runs shared by several tests (each costs a second or two of wall time), started once.
const memo = new Map<string, Promise<SimReport>>();
function once(key: string, o: Parameters<typeof runSim>[0]): Promise<SimReport> {
  let p = memo.get(key);
  if (p === undefined) {
    p = runSim(o);
    memo.set(key, p);
  }
  return p;
}

function same(t: { is: (a: unknown, b: unknown, m?: string) => void; deepEqual: (a: unknown, b: unknown, m?: string) => void }, a: SimReport, b: SimReport): void {
  t.is(a.eventLog, b.eventLog, 'byte-identical event logs');
  const { eventLog: _a, ...ra } = a;
  const { eventLog: _b, ...rb } = b;
  t.deepEqual(ra, rb, 'identical reports');
}

test('one seed, one execution: the same options twice give byte-identical event logs and the same report', async (t) => {
  const [a, b] = await Promise.all([once('all', ALL), once('all again', ALL)]);
  same(t, a, b);
  t.true(a.eventLog.split('\n').length > 100, 'a log with something in it');
});

test('a schedule with every fault type: each applied once, every guest recovered, the audit clean (granted == returned)', async (t) => {
  const r = await once('all', ALL);
  t.deepEqual(r.errors, []);
  t.deepEqual(r.faults, Object.fromEntries(FAULT_TYPES.map((f) => [f, 1])));
  t.true(r.clean);
  const a = r.audit;
  t.true(a.granted > 1000, `${a.granted} grants`);
  t.deepEqual(a, { granted: a.granted, returned: a.granted, outstanding: 0, leaked: 0, earlyReturns: 0, doubleReturns: 0, corruptPayloads: 0 });
  t.true(r.packets > 0 && r.bytes > r.packets);
  t.regex(r.eventLog, /^0\.000 sim start seed=7 seconds=7 guests=3 design=rusty /);
  t.regex(r.eventLog, /\n\S+ audit clean granted=\d+ /);
});

test('the generated schedule: deterministic per seed, and the seed changes the execution', async (t) => {
  const [a, a2, b] = await Promise.all([once('gen', GEN), once('gen again', GEN), runSim({ ...GEN, seed: 12 })]);
  same(t, a, a2);
  t.true(a.clean, a.errors.join('; '));
  t.not(b.eventLog, a.eventLog);
  t.not(b.schedule, a.schedule);
});

test('a printed schedule replays: runSim with the parsed text of a report\'s schedule is the same execution', async (t) => {
  const a = await once('gen', GEN);
  t.not(a.schedule, '');
  const replay = await runSim({ ...GEN, schedule: schedule(a.schedule.replace(/\n/g, ' ; ')) });
  same(t, a, replay);
});

test('progress once per virtual second, and every log line live', async (t) => {
  const seconds: number[] = [];
  const live: string[] = [];
  const r = await runSim({ seed: 3, seconds: 3, guests: 2, schedule: [], onProgress: (p) => seconds.push(p.virtualSeconds), onLogLine: (l) => live.push(l) });
  t.deepEqual(seconds, [1, 2, 3]);
  t.is(`${live.join('\n')}\n`, r.eventLog);
});

test('bad options are refused with exact messages', async (t) => {
  const table: [Parameters<typeof runSim>[0], string][] = [
    [{ seed: -1, seconds: 1, guests: 1 }, 'seed must be an integer in [0, 4294967295] but got -1'],
    [{ seed: 1.5, seconds: 1, guests: 1 }, 'seed must be an integer in [0, 4294967295] but got 1.5'],
    [{ seed: 1, seconds: 0, guests: 1 }, 'seconds must be a number in (0, 3600] but got 0'],
    [{ seed: 1, seconds: 1, guests: 65 }, 'guests must be an integer in [1, 64] but got 65'],
    [{ seed: 1, seconds: 1, guests: 1, rate: 0 }, 'rate must be a number in (0, 1000000] but got 0'],
  ];
  for (const [o, m] of table) {
    const e = await t.throwsAsync(runSim(o));
    t.is(e?.message, m);
    t.true(e instanceof RangeError);
  }
});

test('the negative control: the naive release design returns grants early, and the run says so', async (t) => {
  const r = await runSim({ seed: 1, seconds: 3, guests: 3, schedule: [], design: 'naive' });
  t.false(r.clean);
  t.true(r.audit.earlyReturns > 0, `${r.audit.earlyReturns} early returns`);
  t.regex(r.errors.join('\n'), /^oracle: early return of gref \d+/m);
  t.regex(r.eventLog, /\n\S+ audit FAILED /);
});
