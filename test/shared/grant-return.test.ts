import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { MessageChannel } from 'node:worker_threads';
import {
  GRANT_RETURN_MAX_BATCH,
  GRANT_RETURN_TYPE,
  makeGrantReturnMessage,
  parseGrantReturnMessage,
  postGrantReturn,
  type GrantReturnMessage,
} from '../../shared/grant-return.js';

const refused: [string, unknown, string][] = [
  ['null', null, 'grant-return message is corrupt: expected an object but got null'],
  ['a number', 7, 'grant-return message is corrupt: expected an object but got number'],
  ['a wrong type tag', { type: 'grant-retrun', backend: 0, seq: 0, grefs: new Uint32Array(1) }, 'grant-return type is corrupt: expected "grant-return" but got "grant-retrun"'],
  ['a negative backend', { type: GRANT_RETURN_TYPE, backend: -1, seq: 0, grefs: new Uint32Array(1) }, 'grant-return backend is corrupt: expected an integer 0 <= x <= 65535 but got -1'],
  ['a fractional seq', { type: GRANT_RETURN_TYPE, backend: 0, seq: 1.5, grefs: new Uint32Array(1) }, 'grant-return seq is corrupt: expected an integer 0 <= x <= 4294967295 but got 1.5'],
  ['grefs as a plain array', { type: GRANT_RETURN_TYPE, backend: 0, seq: 0, grefs: [8, 9] }, 'grant-return grefs is corrupt: expected a Uint32Array but got Array'],
  ['grefs as an Int32Array', { type: GRANT_RETURN_TYPE, backend: 0, seq: 0, grefs: new Int32Array(1) }, 'grant-return grefs is corrupt: expected a Uint32Array but got Int32Array'],
  ['an empty batch', { type: GRANT_RETURN_TYPE, backend: 0, seq: 0, grefs: new Uint32Array(0) }, 'grant-return grefs is corrupt: expected 1 <= length <= 256 but got 0'],
  ['an oversized batch', { type: GRANT_RETURN_TYPE, backend: 0, seq: 0, grefs: new Uint32Array(257) }, 'grant-return grefs is corrupt: expected 1 <= length <= 256 but got 257'],
];

for (const [name, data, message] of refused) {
  test(`parse refuses ${name} with an exact message`, (t) => {
    t.deepEqual(parseGrantReturnMessage(data), { ok: false, error: message });
  });
}

testProp(
  'make then parse is the identity on grefs[0..n)',
  [fc.array(fc.integer({ min: 0, max: 0xffffffff }), { minLength: 1, maxLength: GRANT_RETURN_MAX_BATCH }), fc.integer({ min: 0, max: 0xffff }), fc.nat()],
  (t, grefs, backend, seq) => {
    const m = makeGrantReturnMessage(backend, seq >>> 0, grefs);
    const p = parseGrantReturnMessage(m);
    t.true(p.ok);
    if (p.ok) {
      t.deepEqual(Array.from(p.value.grefs), grefs);
      t.is(p.value.backend, backend);
      t.is(p.value.seq, seq >>> 0);
    }
  },
);

test('make refuses our own bad values', (t) => {
  t.throws(() => makeGrantReturnMessage(0, 0, []), { message: 'grant-return batch must hold 1..256 grefs but got 0' });
  t.throws(() => makeGrantReturnMessage(0, 0, new Uint32Array(300), 300), { message: 'grant-return batch must hold 1..256 grefs but got 300' });
  t.throws(() => makeGrantReturnMessage(0x10000, 0, [8]), { message: 'backend must be a u16 but got 65536' });
  t.deepEqual(Array.from(makeGrantReturnMessage(0, 0, new Uint32Array([8, 9, 10]), 2).grefs), [8, 9]);
});

test('a notice crosses a real MessagePort with its buffer transferred', async (t) => {
  const { port1, port2 } = new MessageChannel();
  t.teardown(() => {
    port1.close();
    port2.close();
  });
  const got = new Promise<unknown>((resolve) => port2.once('message', resolve));
  const msg = makeGrantReturnMessage(0, 3, [8, 9, 4000]);
  postGrantReturn(port1, msg);
  t.is(msg.grefs.byteLength, 0, 'the sender no longer owns the buffer');
  const p = parseGrantReturnMessage(await got);
  t.true(p.ok);
  if (p.ok) t.deepEqual(p.value, { type: 'grant-return', backend: 0, seq: 3, grefs: new Uint32Array([8, 9, 4000]) } satisfies GrantReturnMessage);
});
