import test from 'ava';
import { fc, testProp } from '@fast-check/ava';
import { WindowCounter, quantile, rateRange, ratioRange, scaleRange } from '../../../tools/bench/rates.js';

test('quantile interpolates between order statistics and is NaN when empty', (t) => {
  t.is(quantile([], 0.5), NaN);
  t.is(quantile([7], 0.9), 7);
  t.is(quantile([4, 1, 3, 2], 0), 1);
  t.is(quantile([4, 1, 3, 2], 1), 4);
  t.is(quantile([4, 1, 3, 2], 0.5), 2.5);
  t.is(quantile([10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110], 0.1), 20);
});

testProp('quantiles are ordered and within the sample', [fc.array(fc.double({ min: 0, max: 1e9, noNaN: true }), { minLength: 1, maxLength: 60 })], (t, xs) => {
  const r = rateRange(xs);
  const lo = Math.min(...xs);
  const hi = Math.max(...xs);
  t.true(lo <= r.p10 && r.p10 <= r.p50 && r.p50 <= r.p90 && r.p90 <= hi);
  t.is(r.windows, xs.length);
});

test('WindowCounter counts per window, skips warm-up windows and the unfinished last one', (t) => {
  const c = new WindowCounter(10, 5);
  c.start(1000);
  c.add(1000, 1); // window 0
  c.add(1009.9, 2); // window 0
  c.add(1010, 5); // window 1
  c.add(1025, 7); // window 2
  c.add(1031, 1); // window 3 (the last seen: incomplete)
  t.deepEqual(c.rates(), [300, 500, 700]);
  t.deepEqual(c.rates(1), [500, 700]);
  t.true(c.add(1049.9));
  t.false(c.add(1050));
  t.false(c.done(1049));
  t.true(c.done(1050));
});

test('WindowCounter ignores completions before the start and rejects bad shapes', (t) => {
  const c = new WindowCounter(10, 2);
  c.start(100);
  t.true(c.add(50, 9));
  c.add(105);
  c.add(115);
  t.deepEqual(c.rates(), [100]);
  t.throws(() => new WindowCounter(0, 1), { message: 'windowMs must be > 0 but got 0' });
  t.throws(() => new WindowCounter(1, 0), { message: 'maxWindows must be a positive integer but got 0' });
});

test('scaleRange and ratioRange are pessimistic bands of the same run', (t) => {
  const a = { p10: 10, p50: 20, p90: 40, mean: 22, windows: 3 };
  const b = { p10: 5, p50: 10, p90: 20, mean: 11, windows: 3 };
  t.deepEqual(scaleRange(a, 2), { p10: 20, p50: 40, p90: 80, mean: 44, windows: 3 });
  t.deepEqual(ratioRange(a, b), { low: 0.5, mid: 2, high: 8 });
});
