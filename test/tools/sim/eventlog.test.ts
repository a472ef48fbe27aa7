// The event log's canonical text: fixed formatting of times and values, single lines, and the listeners.
import test from 'ava';
import { EventLog, formatLogTime, formatLogValue } from '../../../tools/sim/eventlog.js';

test('times print with exactly 3 decimals; -0 prints as 0', (t) => {
  t.is(formatLogTime(0), '0.000');
  t.is(formatLogTime(-0), '0.000');
  t.is(formatLogTime(12000.0004), '12000.000');
  t.is(formatLogTime(1.0015), '1.002');
  t.is(formatLogTime(0.001), '0.001');
});

test('values: integers as they are, other numbers with 3 decimals, booleans as 1/0, strings as they are', (t) => {
  const table: [number | string | boolean, string][] = [
    [42, '42'],
    [-7, '-7'],
    [0.05, '0.050'],
    [1 / 3, '0.333'],
    [Infinity, 'Infinity'],
    [NaN, 'NaN'],
    [true, '1'],
    [false, '0'],
    ['vif3.0', 'vif3.0'],
  ];
  for (const [v, s] of table) t.is(formatLogValue(v), s, String(v));
});

test('lines: time, who, what, then fields in the order given; text() ends with a newline', (t) => {
  const log = new EventLog();
  t.is(log.text(), '');
  const seen: string[] = [];
  log.onLine((l) => seen.push(l));
  log.add(12000, 'fault', 'loss', [['dur', 3000], ['p', 0.05]]);
  log.add(12000.5, 'g1.d1', 'killed');
  t.is(log.text(), '12000.000 fault loss dur=3000 p=0.050\n12000.500 g1.d1 killed\n');
  t.deepEqual(seen, ['12000.000 fault loss dur=3000 p=0.050', '12000.500 g1.d1 killed']);
  t.is(log.length, 2);
  t.deepEqual(log.find('fault loss'), ['12000.000 fault loss dur=3000 p=0.050']);
  t.deepEqual(log.find('g1.d1'), ['12000.500 g1.d1 killed']);
  t.deepEqual(log.find('g2'), []);
});

test('a value with a line break is refused (the log is one event per line)', (t) => {
  const log = new EventLog();
  t.is(t.throws(() => log.add(1, 'x', 'y', [['error', 'a\nb']]))!.message, 'event log lines are single lines: "1.000 x y error=a\\nb"');
  t.is(log.length, 0);
});
