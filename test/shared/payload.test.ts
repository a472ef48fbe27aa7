import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { PAYLOAD_TAG_LEN, checkTaggedPayload, findPatternMismatch, fillPattern, writeTaggedPayload } from '../../shared/payload.js';

testProp(
  'a tagged payload verifies, and any changed byte after the tag is found',
  [fc.integer({ min: PAYLOAD_TAG_LEN + 1, max: 3000 }), fc.nat(), fc.nat(), fc.nat(), fc.integer({ min: 1, max: 255 })],
  (t, len, stream, pos, where, flip) => {
    const buf = new Uint8Array(len + 3);
    writeTaggedPayload(buf, 3, len, stream, pos);
    t.deepEqual(checkTaggedPayload(buf, 3, len), { ok: true, value: { stream: stream >>> 0, pos: pos >>> 0 } });
    const i = 3 + PAYLOAD_TAG_LEN + (where % (len - PAYLOAD_TAG_LEN));
    buf[i] = buf[i]! ^ flip;
    t.false(checkTaggedPayload(buf, 3, len).ok);
  },
);

test('a poisoned page (0xdb fill) fails almost everywhere', (t) => {
  const page = new Uint8Array(4096).fill(0xdb);
  let matches = 0;
  for (let i = 0; i < 4096; i++) if (findPatternMismatch(page, i, 1, 7, 1000 + i) < 0) matches++;
  t.true(matches < 64, `${matches} poisoned bytes look valid`);
  t.is(findPatternMismatch(page, 0, 4096, 7, 1000) >= 0, true);
});

testProp('slices of a stream verify at their own positions (segmentation keeps the pattern)', [fc.nat(5000), fc.nat(5000)], (t, a, b) => {
  const whole = new Uint8Array(12000);
  fillPattern(whole, 0, whole.length, 42, 9);
  const lo = Math.min(a, b);
  const hi = Math.max(a, b);
  t.is(findPatternMismatch(whole, lo, hi - lo, 42, 9 + lo), -1);
});

test('corruption message is exact', (t) => {
  const buf = new Uint8Array(20);
  writeTaggedPayload(buf, 0, 20, 1, 0);
  buf[10] = buf[10]! ^ 0xff;
  const want = (Math.imul(2, 251) + 101) & 0xff;
  t.deepEqual(checkTaggedPayload(buf, 0, 20), {
    ok: false,
    error: `payload is corrupt at byte 10: expected 0x${want.toString(16)} but got 0x${(want ^ 0xff).toString(16)}`,
  });
  t.deepEqual(checkTaggedPayload(buf, 0, 5), { ok: false, error: 'payload is too short: expected >= 8 bytes but got 5' });
});
