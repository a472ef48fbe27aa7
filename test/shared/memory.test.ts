import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { GUEST_MEMORY_MAX_FRAMES, GuestMemory, XEN_PAGE_SIZE } from '../../shared/memory.js';

test('a frame is a cached 4096-byte view of the shared buffer at n * 4096', (t) => {
  const mem = GuestMemory.create(4);
  t.is(mem.nrFrames, 4);
  t.is(mem.sab.byteLength, 4 * XEN_PAGE_SIZE);
  const f2 = mem.frame(2);
  t.is(f2.length, XEN_PAGE_SIZE);
  t.is(f2.byteOffset, 2 * XEN_PAGE_SIZE);
  t.is(f2.buffer, mem.sab);
  t.is(mem.frame(2), f2, 'the same view object is returned every time');
});

testProp(
  'a peer wrapping the same buffer sees the owner\'s writes in the same frame and byte',
  [fc.integer({ min: 1, max: 8 }), fc.nat(), fc.nat(XEN_PAGE_SIZE - 1), fc.integer({ min: 1, max: 255 })],
  (t, frames, n, off, value) => {
    const owner = GuestMemory.create(frames);
    const peer = GuestMemory.fromBuffer(owner.sab);
    const f = n % frames;
    owner.frame(f)[off] = value;
    t.is(peer.nrFrames, frames);
    t.is(peer.frame(f)[off], value);
    t.is(peer.bytes[f * XEN_PAGE_SIZE + off], value);
    // Nothing else changed: the frame views do not overlap.
    let sum = 0;
    for (const b of peer.bytes) sum += b;
    t.is(sum, value);
  },
);

test('frame numbers outside the memory throw RangeError with the exact message', (t) => {
  const mem = GuestMemory.create(3);
  for (const [n, shown] of [
    [3, '3'],
    [-1, '-1'],
    [1.5, '1.5'],
    [Number.NaN, 'NaN'],
  ] as const) {
    t.false(mem.hasFrame(n));
    t.throws(() => mem.frame(n), {
      instanceOf: RangeError,
      message: `frame is out of range: expected 0 <= x < 3 but got ${shown}`,
    });
  }
  t.true(mem.hasFrame(0));
  t.true(mem.hasFrame(2));
});

test('bad sizes throw RangeError with exact messages', (t) => {
  for (const n of [0, -1, 2.5, GUEST_MEMORY_MAX_FRAMES + 1]) {
    t.throws(() => GuestMemory.create(n), {
      instanceOf: RangeError,
      message: `nrFrames must be an integer in [1, ${GUEST_MEMORY_MAX_FRAMES}] but got ${n}`,
    });
  }
  for (const len of [0, 100, XEN_PAGE_SIZE + 1]) {
    t.throws(() => GuestMemory.fromBuffer(new SharedArrayBuffer(len)), {
      instanceOf: RangeError,
      message: `guest memory must be 1 to ${GUEST_MEMORY_MAX_FRAMES} whole frames of 4096 bytes but got ${len} bytes`,
    });
  }
});
