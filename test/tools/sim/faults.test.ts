// The seeded fault schedule: a function of (seed, seconds, guests); every type in a run of 10 s or more; no two
// conflicting events overlapping; printable and parseable back exactly, with exact messages for bad text.
import test from 'ava';
import { fc, testProp } from '@fast-check/ava';
import {
  FAULT_KEYS,
  FAULT_RECOVERY_MS,
  FAULT_TYPES,
  countFaults,
  formatFaultEvent,
  formatFaultSchedule,
  makeFaultSchedule,
  parseFaultEvent,
  parseFaultSchedule,
  type FaultEvent,
} from '../../../tools/sim/faults.js';

// The test's own idea of how long an event disturbs the system (kept apart from faultSpan on purpose).
function busyUntil(e: FaultEvent): number {
  if (e.type === 'guest-kill') return e.at + e.restart + FAULT_RECOVERY_MS;
  if (e.type === 'backend-kill') return e.at + Math.max(e.release, e.restart) + FAULT_RECOVERY_MS;
  if (e.type === 'revoke-mapped') return e.at + 1;
  return e.at + e.dur;
}

const guestOf = (e: FaultEvent): number => ('g' in e ? e.g : 0);

testProp(
  'makeFaultSchedule: the same arguments give the same schedule; every type in runs of 10 s or more; nothing conflicting overlaps; all inside the run',
  [fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 10, max: 600 }), fc.integer({ min: 1, max: 64 })],
  (t, seed, seconds, guests) => {
    const s = makeFaultSchedule(seed, seconds, guests);
    t.deepEqual(makeFaultSchedule(seed, seconds, guests), s);
    const counts = countFaults(s);
    // Below 30 s a slot kill can lose its room to the other kills (rarely): demand it from 30 s.
    for (const type of FAULT_TYPES) if (type !== 'guest-kill' || seconds >= 30) t.true(counts[type] >= 1, `${type} missing`);
    const runMs = seconds * 1000;
    for (let i = 0; i < s.length; i++) {
      const a = s[i]!;
      if (i > 0) t.true(a.at >= s[i - 1]!.at, 'sorted by time');
      t.true(a.at >= 0 && busyUntil(a) <= runMs, `${formatFaultEvent(a)} inside the run`);
      if ('g' in a) t.true(a.g >= 1 && a.g <= guests, `${formatFaultEvent(a)} names a slot`);
      for (let j = i + 1; j < s.length; j++) {
        const b = s[j]!;
        const overlap = a.at < busyUntil(b) && b.at < busyUntil(a);
        if (!overlap) continue;
        const what = `${formatFaultEvent(a)} overlaps ${formatFaultEvent(b)}`;
        t.false(a.type === 'backend-kill' || b.type === 'backend-kill', what);
        t.false(guestOf(a) !== 0 && guestOf(a) === guestOf(b), what);
        t.false(guestOf(a) === 0 && guestOf(b) === 0 && a.type === b.type, what);
      }
    }
    // What the generator makes, the parser takes back unchanged (values inside the parser's bounds).
    t.deepEqual(parseFaultSchedule(formatFaultSchedule(s)), { ok: true, value: s });
  },
  { numRuns: 60 },
);

test('makeFaultSchedule: the seed matters', (t) => {
  t.notDeepEqual(makeFaultSchedule(1, 60, 4), makeFaultSchedule(2, 60, 4));
  t.notDeepEqual(makeFaultSchedule(1, 60, 4), makeFaultSchedule(1, 60, 5));
});

test('makeFaultSchedule: bad arguments are refused with exact messages', (t) => {
  t.is(t.throws(() => makeFaultSchedule(1, 60, 0))!.message, 'guests must be an integer in [1, 64] but got 0');
  t.is(t.throws(() => makeFaultSchedule(1, 60, 65))!.message, 'guests must be an integer in [1, 64] but got 65');
  t.is(t.throws(() => makeFaultSchedule(1, 0, 4))!.message, 'seconds must be in (0, 3600] but got 0');
  t.is(t.throws(() => makeFaultSchedule(1, 3601, 4))!.message, 'seconds must be in (0, 3600] but got 3601');
});

const arbEvent: fc.Arbitrary<FaultEvent> = fc.oneof(
  ...FAULT_TYPES.map((type) =>
    fc
      .record({
        at: fc.integer({ min: 0, max: 3_600_000 }),
        dur: fc.integer({ min: 1, max: 3_600_000 }),
        p: fc.integer({ min: 0, max: 1000 }).map((k) => k / 1000),
        hold: fc.integer({ min: 0, max: 60_000 }),
        g: fc.integer({ min: 1, max: 64 }),
        every: fc.integer({ min: 1, max: 60_000 }),
        restart: fc.integer({ min: 0, max: 600_000 }),
        release: fc.integer({ min: 0, max: 600_000 }),
        n: fc.integer({ min: 1, max: 100_000 }),
      })
      .map((r) => {
        const e: Record<string, unknown> = { type, at: r.at };
        for (const k of FAULT_KEYS[type]) e[k] = (r as Record<string, number>)[k];
        return e as unknown as FaultEvent;
      }),
  ),
);

testProp('formatFaultEvent / parseFaultEvent round-trip every event exactly', [arbEvent], (t, e) => {
  const text = formatFaultEvent(e);
  t.regex(text, /^[0-9]+ [a-z-]+( [a-z]+=[0-9.]+)*$/);
  t.deepEqual(parseFaultEvent(text), { ok: true, value: e });
});

testProp('parseFaultSchedule: a printed schedule parses back, sorted by time (stable)', [fc.array(arbEvent, { maxLength: 12 })], (t, events) => {
  const sorted = events.map((e, i) => [e, i] as const).sort((a, b) => a[0].at - b[0].at || a[1] - b[1]).map(([e]) => e);
  t.deepEqual(parseFaultSchedule(formatFaultSchedule(events)), { ok: true, value: sorted });
  t.deepEqual(parseFaultSchedule(events.map(formatFaultEvent).join(' ; ')), { ok: true, value: sorted });
});

test('parseFaultSchedule: separators, blank lines and comments', (t) => {
  const r = parseFaultSchedule('# a replay\n\n 900 nic-stall dur=5 ; 100 guest-kill g=2 restart=0 # the first\n;');
  t.deepEqual(r, {
    ok: true,
    value: [
      { type: 'guest-kill', at: 100, g: 2, restart: 0 },
      { type: 'nic-stall', at: 900, dur: 5 },
    ],
  });
  t.deepEqual(parseFaultSchedule(''), { ok: true, value: [] });
});

const BAD: readonly [string, string][] = [
  ['x loss dur=1 p=0.1', 'time must be an integer number of ms in [0, 3600000] but got "x"'],
  ['3600001 nic-stall dur=1', 'time must be an integer number of ms in [0, 3600000] but got "3600001"'],
  ['5', 'missing fault type after the time'],
  ['5 quake', `unknown fault type "quake": expected one of ${FAULT_TYPES.join(', ')}`],
  ['5 loss dur=10', 'loss needs p'],
  ['5 loss dur=10 p=2', 'loss: p must be a number in [0, 1] but got "2"'],
  ['5 loss dur=10 p=.5.', 'loss: p must be a number in [0, 1] but got ".5."'],
  ['5 loss dur=10 p=0.1 g=1', 'loss takes no key "g": expected dur, p'],
  ['5 guest-kill g=0 restart=1', 'guest-kill: g must be an integer in [1, 64] but got "0"'],
  ['5 guest-kill g=1.5 restart=1', 'guest-kill: g must be an integer in [1, 64] but got "1.5"'],
  ['5 backend-kill release=1 restart=600001', 'backend-kill: restart must be an integer in [0, 600000] but got "600001"'],
  ['5 nic-stall dur', 'nic-stall: expected key=value but got "dur"'],
  ['5 nic-stall dur=0', 'nic-stall: dur must be an integer in [1, 3600000] but got "0"'],
  ['5 nic-stall dur=1 dur=2', 'nic-stall: key "dur" is given twice'],
  ['5 event-storm g=1 dur=5', 'event-storm needs n'],
];

test('parseFaultEvent: exact messages for bad events', (t) => {
  for (const [line, message] of BAD) t.deepEqual(parseFaultEvent(line), { ok: false, error: message }, line);
});

test('parseFaultSchedule: the bad event is named by its place', (t) => {
  t.deepEqual(parseFaultSchedule('1 loss dur=1 p=0\n# skipped\n2 nope'), { ok: false, error: `event 2: unknown fault type "nope": expected one of ${FAULT_TYPES.join(', ')}` });
});

test('countFaults: every type present, in FAULT_TYPES order', (t) => {
  const c = countFaults([
    { type: 'loss', at: 0, dur: 1, p: 0 },
    { type: 'loss', at: 5, dur: 1, p: 0 },
    { type: 'backend-kill', at: 9, release: 0, restart: 1 },
  ]);
  t.deepEqual(Object.keys(c), [...FAULT_TYPES]);
  t.is(c.loss, 2);
  t.is(c['backend-kill'], 1);
  t.is(c['guest-kill'], 0);
});
