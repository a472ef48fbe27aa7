// Single-thread tests of the shared ring (io/ring.h): sizes, init, random schedules against a model queue
// across the 32-bit wrap, notify decisions against an independently written formula, overflow predicates,
// hostile producer indices, and the lost wake-up that RING_FINAL_CHECK_FOR_* exists to prevent.

import test from 'ava';
import { fc, testProp } from '@fast-check/ava';
import {
  attachBackRing,
  BackRing,
  FrontRing,
  kReqEvent,
  kReqProd,
  kRspEvent,
  kRspProd,
  RING_OVERFLOW,
  ringSize,
  sharedRingInit,
  SRING_HEADER_SIZE,
  XEN_PAGE_SIZE,
} from '../../shared/ring.js';
import type { WireStruct } from '../../shared/ring.js';

/** A test message: a sequence number and a tag that says which direction wrote it. */
interface Msg {
  seq: number;
  tag: number;
}
const REQ_TAG = 0x51455221;
const RSP_TAG = 0x50535221;

const MsgStruct: WireStruct<Msg> = {
  SIZE: 8,
  readInto(view, off, t) {
    t.seq = view.getUint32(off, true);
    t.tag = view.getUint32(off + 4, true);
    return t;
  },
  write(view, off, v) {
    view.setUint32(off, v.seq, true);
    view.setUint32(off + 4, v.tag, true);
  },
};

const TWO32 = 2n ** 32n;
/** (a - b) mod 2^32 computed in BigInt, independently of the `>>> 0` idiom the ring uses. */
function dist(a: number, b: number): number {
  return Number((((BigInt(a) - BigInt(b)) % TWO32) + TWO32) % TWO32);
}
function u32(x: number): number {
  return Number(((BigInt(x) % TWO32) + TWO32) % TWO32);
}

/** The notify rule restated: notify iff the event index lies in (old, new] on the 32-bit circle. */
function eventCrossed(oldProd: number, newProd: number, event: number): boolean {
  const advanced = dist(newProd, oldProd);
  for (let k = 1; k <= advanced; k++) if (u32(oldProd + k) === u32(event)) return true;
  return false;
}

const CANARY = 0x5a;

/** A SAB with a canary page, the ring page, and another canary page. */
function makeRing(entryBytes: number, start: number) {
  const sab = new SharedArrayBuffer(3 * XEN_PAGE_SIZE);
  const bytes = new Uint8Array(sab);
  bytes.fill(CANARY);
  sharedRingInit(sab, XEN_PAGE_SIZE, start);
  const front = new FrontRing(sab, XEN_PAGE_SIZE, entryBytes, start);
  const back = new BackRing(sab, XEN_PAGE_SIZE, entryBytes, start);
  const words = new Int32Array(sab, XEN_PAGE_SIZE, 16);
  const size = ringSize(entryBytes);
  const tailStart = XEN_PAGE_SIZE + SRING_HEADER_SIZE + size * entryBytes;
  const canariesIntact = (): boolean =>
    bytes.subarray(0, XEN_PAGE_SIZE).every((b) => b === CANARY) &&
    bytes.subarray(tailStart).every((b) => b === CANARY) &&
    bytes.subarray(XEN_PAGE_SIZE + 16, XEN_PAGE_SIZE + SRING_HEADER_SIZE).every((b) => b === 0);
  const word = (i: number): number => Atomics.load(words, i) >>> 0;
  const setWord = (i: number, v: number): void => void Atomics.store(words, i, v | 0);
  return { sab, bytes, front, back, size, word, setWord, canariesIntact };
}

const entryArb = fc.constantFrom(8, 12, 64, 500, 1008, 2016, 4032);
const startArb = fc.oneof(
  fc.constant(0),
  fc.integer({ min: 2 ** 32 - 600, max: 2 ** 32 - 1 }),
  fc.integer({ min: 0, max: 2 ** 32 - 1 }),
);

test('ringSize rounds the entries that fit in 4096 - 64 bytes down to a power of two', (t) => {
  const cases: [number, number][] = [
    [12, 256], // netif TX: 4032 / 12 = 336
    [8, 256], // netif RX: 4032 / 8 = 504
    [1, 2048],
    [64, 32], // 63
    [112, 32], // blkif: 4032 / 112 = 36
    [2016, 2],
    [2017, 1],
    [4032, 1],
  ];
  for (const [entry, size] of cases) t.is(ringSize(entry), size, `entry ${entry}`);
  for (const bad of [0, -1, 1.5, 4033, NaN]) {
    const message = `entryBytes must be an integer in 1..4032 but got ${bad}`;
    t.throws(() => ringSize(bad), { instanceOf: RangeError, message });
  }
});

testProp('ringSize is the largest power of two whose entries fit', [fc.integer({ min: 1, max: 4032 })], (t, entry) => {
  const n = ringSize(entry);
  t.true(n > 0 && (n & (n - 1)) === 0);
  t.true(n * entry <= 4032);
  t.true(2 * n * entry > 4032);
});

test('sharedRingInit: producers at start, events at start + 1, pvt and pad zeroed, entries untouched', (t) => {
  for (const [start, header] of [
    [0, '00000000 01000000 00000000 01000000'],
    [0xfffffffe, 'feffffff ffffffff feffffff ffffffff'],
    [0xffffffff, 'ffffffff 00000000 ffffffff 00000000'],
  ] as const) {
    const sab = new SharedArrayBuffer(XEN_PAGE_SIZE);
    const bytes = new Uint8Array(sab).fill(0xee);
    sharedRingInit(sab, 0, start);
    const hex = (a: Uint8Array) => Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
    t.is([0, 4, 8, 12].map((o) => hex(bytes.subarray(o, o + 4))).join(' '), header);
    t.true(bytes.subarray(16, 64).every((b) => b === 0));
    t.true(bytes.subarray(64).every((b) => b === 0xee));
  }
});

test('ring pages out of bounds or misaligned are refused (our bug)', (t) => {
  const sab = new SharedArrayBuffer(2 * XEN_PAGE_SIZE);
  for (const off of [-4, 4098, 4100, 1.5]) {
    const message = `ring page is out of bounds: expected a multiple of 4 in 0..4096 but got ${off}`;
    t.throws(() => sharedRingInit(sab, off), { instanceOf: RangeError, message });
    t.throws(() => new FrontRing(sab, off, 12), { instanceOf: RangeError, message });
  }
  t.throws(() => sharedRingInit(sab, 0, -1), {
    instanceOf: RangeError,
    message: 'startIndex must be a uint32 but got -1',
  });
  t.throws(() => new BackRing(sab, 0, 12, 2 ** 32), {
    instanceOf: RangeError,
    message: 'startIndex must be a uint32 but got 4294967296',
  });
});

testProp(
  'slotOffset is 64 + (index mod size) * entryBytes',
  [entryArb, fc.integer({ min: 0, max: 2 ** 32 - 1 })],
  (t, entry, index) => {
    const { front, back, size } = makeRing(entry, 0);
    const expected = SRING_HEADER_SIZE + Number(BigInt(index) % BigInt(size)) * entry;
    t.is(front.slotOffset(index), expected);
    t.is(back.slotOffset(index), expected);
  },
);

type Op =
  | { op: 'put'; n: number }
  | { op: 'pushReq' }
  | { op: 'takeReq'; n: number }
  | { op: 'respond'; n: number }
  | { op: 'pushRsp' }
  | { op: 'takeRsp'; n: number }
  | { op: 'finalReq' }
  | { op: 'finalRsp' };

const nArb = fc.oneof(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 1, max: 300 }));
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constant('put' as const), n: nArb }),
  fc.constant({ op: 'pushReq' as const }),
  fc.record({ op: fc.constant('takeReq' as const), n: nArb }),
  fc.record({ op: fc.constant('respond' as const), n: nArb }),
  fc.constant({ op: 'pushRsp' as const }),
  fc.record({ op: fc.constant('takeRsp' as const), n: nArb }),
  fc.constant({ op: 'finalReq' as const }),
  fc.constant({ op: 'finalRsp' as const }),
);

testProp(
  'random push/consume schedules match a model queue across the 32-bit wrap',
  [entryArb, startArb, fc.array(opArb, { maxLength: 150, size: 'max' })],
  (t, entry, start, ops) => {
    const { front, back, size, word, canariesIntact } = makeRing(entry, start);
    // Model: counts since start; ring indices are (start + count) mod 2^32.
    let reqPut = 0;
    let reqPushed = 0;
    let reqCons = 0;
    let rspPut = 0;
    let rspPushed = 0;
    let rspCons = 0;
    let reqEvent = u32(start + 1);
    let rspEvent = u32(start + 1);
    const msg: Msg = { seq: 0, tag: 0 };
    const at = (count: number) => u32(start + count);

    for (const o of ops) {
      switch (o.op) {
        case 'put': {
          const free = size - (reqPut - rspCons);
          t.is(front.freeRequests(), free);
          t.is(front.isFull(), free === 0);
          const k = Math.min(o.n, free);
          for (let i = 0; i < k; i++) front.putRequest(MsgStruct, { seq: reqPut + i, tag: REQ_TAG });
          reqPut += k;
          break;
        }
        case 'pushReq': {
          const notify = front.pushRequestsAndCheckNotify();
          t.is(notify, eventCrossed(at(reqPushed), at(reqPut), reqEvent), 'request notify');
          reqPushed = reqPut;
          break;
        }
        case 'takeReq': {
          const avail = Math.min(reqPushed - reqCons, size - (reqCons - rspPut));
          t.is(back.unconsumedRequests(), avail);
          t.is(back.reqProdSnapshot, at(reqPushed));
          const k = Math.min(o.n, avail);
          for (let i = 0; i < k; i++) {
            back.copyRequest(at(reqCons + i), MsgStruct, msg);
            t.deepEqual(msg, { seq: reqCons + i, tag: REQ_TAG });
          }
          back.consumeRequests(k);
          reqCons += k;
          break;
        }
        case 'respond': {
          const k = Math.min(o.n, reqCons - rspPut);
          for (let i = 0; i < k; i++) back.putResponse(MsgStruct, { seq: rspPut + i, tag: RSP_TAG });
          rspPut += k;
          break;
        }
        case 'pushRsp': {
          const notify = back.pushResponsesAndCheckNotify();
          t.is(notify, eventCrossed(at(rspPushed), at(rspPut), rspEvent), 'response notify');
          rspPushed = rspPut;
          break;
        }
        case 'takeRsp': {
          t.is(front.unconsumedResponses(), rspPushed - rspCons);
          const k = Math.min(o.n, rspPushed - rspCons);
          for (let i = 0; i < k; i++) {
            front.copyResponse(at(rspCons + i), MsgStruct, msg);
            t.deepEqual(msg, { seq: rspCons + i, tag: RSP_TAG });
          }
          front.consumeResponses(k);
          rspCons += k;
          break;
        }
        case 'finalReq': {
          const pending = Math.min(reqPushed - reqCons, size - (reqCons - rspPut));
          if (pending === 0) reqEvent = at(reqCons + 1);
          t.is(back.finalCheckForRequests(), pending !== 0);
          break;
        }
        case 'finalRsp': {
          const pending = rspPushed - rspCons;
          if (pending === 0) rspEvent = at(rspCons + 1);
          t.is(front.finalCheckForResponses(), pending !== 0);
          break;
        }
      }
      t.deepEqual(
        [word(kReqProd), word(kReqEvent), word(kRspProd), word(kRspEvent)],
        [at(reqPushed), reqEvent, at(rspPushed), rspEvent],
        o.op,
      );
      t.deepEqual(
        [front.reqProdPvt, front.rspCons, back.reqCons, back.rspProdPvt],
        [at(reqPut), at(rspCons), at(reqCons), at(rspPut)],
      );
    }
    t.true(canariesIntact(), 'canaries around the ring page and the header pad are intact');
  },
);

test('requests and responses share slots: a response lands in the slot of the request it follows', (t) => {
  const start = 2 ** 32 - 3;
  const { front, back, bytes } = makeRing(12, start);
  const msg: Msg = { seq: 0, tag: 0 };
  for (let i = 0; i < 6; i++) front.putRequest(MsgStruct, { seq: i, tag: REQ_TAG });
  front.pushRequests();
  t.is(back.unconsumedRequests(), 6);
  for (let i = 0; i < 6; i++) {
    const idx = u32(start + i);
    const off = XEN_PAGE_SIZE + back.slotOffset(idx);
    back.copyRequest(idx, MsgStruct, msg);
    back.consumeRequests(1);
    back.putResponse(MsgStruct, { seq: 100 + i, tag: RSP_TAG });
    t.is(new DataView(bytes.buffer).getUint32(off, true), 100 + i, `slot of request ${i}`);
  }
});

test('a copied request is a snapshot: the frontend rewriting the slot afterwards changes nothing', (t) => {
  const { front, back, bytes } = makeRing(12, 0);
  front.putRequest(MsgStruct, { seq: 7, tag: REQ_TAG });
  front.pushRequests();
  t.is(back.unconsumedRequests(), 1);
  const snap = back.copyRequest(0, MsgStruct, { seq: 0, tag: 0 });
  bytes.fill(0xff, XEN_PAGE_SIZE + back.slotOffset(0), XEN_PAGE_SIZE + back.slotOffset(0) + 12);
  t.deepEqual(snap, { seq: 7, tag: REQ_TAG });
});

test('overflow predicates near the wrap (io/ring.h *_OVERFLOW)', (t) => {
  for (const start of [0, 2 ** 32 - 10, 2 ** 32 - 1, 0x7fffffff]) {
    const { front, back } = makeRing(12, start);
    const s = (k: number) => u32(start + k);
    // RING_REQUEST_PROD_OVERFLOW: (prod - rsp_prod_pvt) > RING_SIZE
    t.false(back.requestProdOverflow(s(0)));
    t.false(back.requestProdOverflow(s(256)));
    t.true(back.requestProdOverflow(s(257)));
    t.true(back.requestProdOverflow(s(-1)));
    // RING_REQUEST_CONS_OVERFLOW: (cons - rsp_prod_pvt) >= RING_SIZE
    t.false(back.requestConsOverflow(s(255)));
    t.true(back.requestConsOverflow(s(256)));
    t.true(back.requestConsOverflow(s(-1)));
    // RING_RESPONSE_PROD_OVERFLOW: (prod - rsp_cons) > RING_SIZE
    t.false(front.responseProdOverflow(s(256)));
    t.true(front.responseProdOverflow(s(257)));
    t.true(front.responseProdOverflow(s(-1)));
  }
});

test('overflow predicates are measured from rsp_prod_pvt / rsp_cons as they move', (t) => {
  const start = 2 ** 32 - 100;
  const { front, back } = makeRing(12, start);
  for (let i = 0; i < 200; i++) front.putRequest(MsgStruct, { seq: i, tag: REQ_TAG });
  front.pushRequests();
  back.unconsumedRequests();
  back.consumeRequests(150);
  for (let i = 0; i < 120; i++) back.putResponse(MsgStruct, { seq: i, tag: RSP_TAG });
  back.pushResponses();
  t.false(back.requestProdOverflow(u32(start + 120 + 256)));
  t.true(back.requestProdOverflow(u32(start + 120 + 257)));
  t.false(back.requestConsOverflow(u32(start + 120 + 255)));
  t.true(back.requestConsOverflow(u32(start + 120 + 256)));
  front.unconsumedResponses();
  front.consumeResponses(120);
  t.false(front.responseProdOverflow(u32(start + 120 + 256)));
  t.true(front.responseProdOverflow(u32(start + 120 + 257)));
});

test('a hostile req_prod is detected from one load, with exact messages', (t) => {
  const start = 2 ** 32 - 5;
  const cases: [number, number | 'overflow', string | null][] = [
    [256, 256, null],
    [257, 'overflow', 'req_prod is corrupt: expected req_prod - req_cons <= 256 but got 257'],
    [-1, 'overflow', 'req_prod is corrupt: expected req_prod - req_cons <= 256 but got 4294967295'],
    [0x80000000, 'overflow', 'req_prod is corrupt: expected req_prod - req_cons <= 256 but got 2147483648'],
  ];
  for (const [ahead, expected, message] of cases) {
    const { back, setWord } = makeRing(12, start);
    setWord(kReqProd, u32(start + ahead));
    const n = back.unconsumedRequests();
    t.is(n, expected === 'overflow' ? RING_OVERFLOW : expected);
    t.is(back.reqProdSnapshot, u32(start + ahead));
    if (message === null) {
      t.throws(() => back.overflowError(), { message: `req_prod ${u32(start + ahead)} is not corrupt` });
    } else {
      t.is(back.overflowError(), message);
      t.true(back.finalCheckForRequests(), 'an overflow is reported as work so the backend notices');
      t.throws(() => back.consumeRequests(1), { instanceOf: RangeError, message: 'cannot consume 1: available 0' });
    }
  }
});

test('a hostile rsp_prod is detected from one load, with exact messages', (t) => {
  const start = 2 ** 32 - 5;
  const { front, setWord } = makeRing(8, start);
  setWord(kRspProd, u32(start + 300));
  t.is(front.unconsumedResponses(), RING_OVERFLOW);
  t.is(front.overflowError(), 'rsp_prod is corrupt: expected rsp_prod - rsp_cons <= 256 but got 300');
  t.true(front.finalCheckForResponses());
  setWord(kRspProd, u32(start + 2));
  t.is(front.unconsumedResponses(), 2);
});

test('unconsumed requests are capped by free response slots (XEN_RING_NR_UNCONSUMED_REQUESTS)', (t) => {
  const start = 2 ** 32 - 7;
  const { front, back, setWord } = makeRing(12, start);
  for (let i = 0; i < 10; i++) front.putRequest(MsgStruct, { seq: i, tag: REQ_TAG });
  front.pushRequests();
  t.is(back.unconsumedRequests(), 10);
  back.consumeRequests(10); // consumed, not yet answered: 10 slots still belong to those requests
  // A lying frontend claims a full ring more; netback's check passes but only 246 slots are free.
  setWord(kReqProd, u32(start + 10 + 256));
  t.is(back.unconsumedRequests(), 246);
  t.true(back.requestProdOverflow(back.reqProdSnapshot));
  for (let i = 0; i < 4; i++) back.putResponse(MsgStruct, { seq: i, tag: RSP_TAG });
  t.is(back.unconsumedRequests(), 250);
});

test('attachBackRing attaches at the published rsp_prod and refuses impossible indices', (t) => {
  const start = 2 ** 32 - 2;
  const { sab, setWord } = makeRing(12, start);
  setWord(kRspProd, u32(start + 2));
  setWord(kReqProd, u32(start + 5));
  const r = attachBackRing(sab, XEN_PAGE_SIZE, 12);
  if (!r.ok) return t.fail(r.error);
  t.is(r.value.reqCons, u32(start + 2));
  t.is(r.value.rspProdPvt, u32(start + 2));
  t.is(r.value.unconsumedRequests(), 3);
  setWord(kReqProd, u32(start + 2 + 257));
  t.deepEqual(attachBackRing(sab, XEN_PAGE_SIZE, 12), {
    ok: false,
    error: 'ring indices are corrupt: expected req_prod - rsp_prod <= 256 but got 257',
  });
  setWord(kReqProd, u32(start + 1));
  t.deepEqual(attachBackRing(sab, XEN_PAGE_SIZE, 12), {
    ok: false,
    error: 'ring indices are corrupt: expected req_prod - rsp_prod <= 256 but got 4294967295',
  });
});

test('misuse by our own code throws RangeError', (t) => {
  const { front, back } = makeRing(8, 0);
  const m: Msg = { seq: 0, tag: 0 };
  const throwsRange = (run: () => void, message: string) => t.throws(run, { instanceOf: RangeError, message });
  for (let i = 0; i < 256; i++) front.putRequest(MsgStruct, { seq: i, tag: REQ_TAG });
  throwsRange(() => front.putRequest(MsgStruct, m), 'no free slot to put a request into');
  throwsRange(() => back.putResponse(MsgStruct, m), 'no free slot to put a response into');
  throwsRange(() => back.copyRequest(0, MsgStruct, m), 'slot 0 is not available: cons 0, available 0');
  front.pushRequests();
  t.is(back.unconsumedRequests(), 256);
  throwsRange(() => back.copyRequest(256, MsgStruct, m), 'slot 256 is not available: cons 0, available 256');
  throwsRange(() => back.copyRequest(2 ** 32 - 1, MsgStruct, m), 'slot 4294967295 is not available: cons 0, available 256');
  throwsRange(() => back.consumeRequests(257), 'cannot consume 257: available 256');
  back.consumeRequests(1);
  const big: WireStruct<Msg> = { ...MsgStruct, SIZE: 12 };
  throwsRange(() => back.putResponse(big, m), 'a 12-byte struct does not fit a 8-byte slot');
  throwsRange(() => front.consumeResponses(1), 'cannot consume 1: available 0');
});

// ---- The lost wake-up (io/ring.h notification hold-off) ----

test('lost wake-up: the consumer re-arms req_event before sleeping, so the next push notifies', (t) => {
  const start = 2 ** 32 - 1;
  const { front, back } = makeRing(12, start);
  front.putRequest(MsgStruct, { seq: 0, tag: REQ_TAG });
  t.true(front.pushRequestsAndCheckNotify(), 'the first request notifies (SHARED_RING_INIT: event = 1)');
  t.is(back.unconsumedRequests(), 1);
  back.consumeRequests(1);
  back.putResponse(MsgStruct, { seq: 0, tag: RSP_TAG });
  back.pushResponses();
  const backendSleeps = !back.finalCheckForRequests();
  t.true(backendSleeps);
  front.putRequest(MsgStruct, { seq: 1, tag: REQ_TAG });
  const notified = front.pushRequestsAndCheckNotify();
  const wouldSleepWithWorkPending = backendSleeps && !notified && back.unconsumedRequests() > 0;
  t.false(wouldSleepWithWorkPending, 'backend would sleep with work pending');
});

test('lost wake-up: work pushed unnotified while the consumer was busy is found by the final check', (t) => {
  const start = 2 ** 32 - 1;
  const { front, back } = makeRing(12, start);
  front.putRequest(MsgStruct, { seq: 0, tag: REQ_TAG });
  t.true(front.pushRequestsAndCheckNotify());
  t.is(back.unconsumedRequests(), 1);
  back.consumeRequests(1);
  // The frontend pushes while the backend is still awake: req_event is stale, so no notification is due.
  front.putRequest(MsgStruct, { seq: 1, tag: REQ_TAG });
  t.false(front.pushRequestsAndCheckNotify());
  t.true(back.finalCheckForRequests(), 'backend would sleep with work pending');
});

/** A BackRing that runs `hook` once, right after a poll that found nothing (inside the final check). */
class GatedBackRing extends BackRing {
  hook: (() => void) | undefined;
  protected override poll(): number {
    const n = super.poll();
    const hook = this.hook;
    if (n === 0 && hook !== undefined) {
      this.hook = undefined;
      hook();
    }
    return n;
  }
}

test('lost wake-up: a push between the first check and arming req_event is caught by the recheck', (t) => {
  const start = 2 ** 32 - 1;
  const { sab, front } = makeRing(12, start);
  const back = new GatedBackRing(sab, XEN_PAGE_SIZE, 12, start);
  front.putRequest(MsgStruct, { seq: 0, tag: REQ_TAG });
  t.true(front.pushRequestsAndCheckNotify());
  t.is(back.unconsumedRequests(), 1);
  back.consumeRequests(1);
  let notified = true;
  back.hook = () => {
    // The frontend runs here, after the backend saw an empty ring but before it re-armed req_event.
    front.putRequest(MsgStruct, { seq: 1, tag: REQ_TAG });
    notified = front.pushRequestsAndCheckNotify();
  };
  const workPending = back.finalCheckForRequests();
  t.false(notified, 'the push saw the stale req_event and did not notify');
  t.true(workPending, 'backend would sleep with work pending');
});

test('lost wake-up, response direction: the frontend re-arms rsp_event and rechecks', (t) => {
  const { front, back } = makeRing(8, 2 ** 32 - 1);
  for (let i = 0; i < 3; i++) front.putRequest(MsgStruct, { seq: i, tag: REQ_TAG });
  front.pushRequests();
  back.unconsumedRequests();
  back.consumeRequests(3);
  back.putResponse(MsgStruct, { seq: 0, tag: RSP_TAG });
  t.true(back.pushResponsesAndCheckNotify());
  front.unconsumedResponses();
  front.consumeResponses(1);
  back.putResponse(MsgStruct, { seq: 1, tag: RSP_TAG });
  t.false(back.pushResponsesAndCheckNotify());
  t.true(front.finalCheckForResponses(), 'frontend would sleep with a response pending');
  front.unconsumedResponses();
  front.consumeResponses(1);
  t.false(front.finalCheckForResponses());
  back.putResponse(MsgStruct, { seq: 2, tag: RSP_TAG });
  t.true(back.pushResponsesAndCheckNotify(), 'frontend would sleep with a response pending');
});

type Step =
  | { s: 'frontPush'; n: number }
  | { s: 'frontReap' }
  | { s: 'frontIdle' }
  | { s: 'backWork'; n: number }
  | { s: 'backIdle' };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  fc.record({ s: fc.constant('frontPush' as const), n: fc.integer({ min: 1, max: 20 }) }),
  fc.constant({ s: 'frontReap' as const }),
  fc.constant({ s: 'frontIdle' as const }),
  fc.record({ s: fc.constant('backWork' as const), n: fc.integer({ min: 1, max: 20 }) }),
  fc.constant({ s: 'backIdle' as const }),
);

testProp(
  'no interleaving of push/notify and final-check/sleep leaves a sleeper with work pending',
  [fc.constantFrom(8, 12, 2016), startArb, fc.array(stepArb, { maxLength: 300, size: 'max' })],
  (t, entry, start, steps) => {
    const { front, back } = makeRing(entry, start);
    let frontAwake = true;
    let backAwake = true;
    let seq = 0;
    for (const st of steps) {
      switch (st.s) {
        case 'frontPush': {
          const k = Math.min(st.n, front.freeRequests());
          for (let i = 0; i < k; i++) front.putRequest(MsgStruct, { seq: seq++, tag: REQ_TAG });
          if (front.pushRequestsAndCheckNotify()) backAwake = true;
          break;
        }
        case 'frontReap':
          if (frontAwake) front.consumeResponses(front.unconsumedResponses());
          break;
        case 'frontIdle':
          if (frontAwake && !front.finalCheckForResponses()) frontAwake = false;
          break;
        case 'backWork': {
          if (!backAwake) break;
          const k = Math.min(st.n, back.unconsumedRequests());
          back.consumeRequests(k);
          for (let i = 0; i < k; i++) back.putResponse(MsgStruct, { seq: i, tag: RSP_TAG });
          if (back.pushResponsesAndCheckNotify()) frontAwake = true;
          break;
        }
        case 'backIdle':
          if (backAwake && !back.finalCheckForRequests()) backAwake = false;
          break;
      }
      if (!backAwake) t.is(back.unconsumedRequests(), 0, 'backend would sleep with work pending');
      if (!frontAwake) t.is(front.unconsumedResponses(), 0, 'frontend would sleep with work pending');
    }
    // Drain: every request put is eventually consumed, answered and reaped.
    front.pushRequests();
    for (let n = back.unconsumedRequests(); n > 0; n = back.unconsumedRequests()) {
      back.consumeRequests(n);
      for (let i = 0; i < n; i++) back.putResponse(MsgStruct, { seq: i, tag: RSP_TAG });
    }
    back.pushResponses();
    front.consumeResponses(front.unconsumedResponses());
    t.deepEqual([back.reqCons, back.rspProdPvt, front.rspCons], [u32(start + seq), u32(start + seq), u32(start + seq)]);
  },
);
