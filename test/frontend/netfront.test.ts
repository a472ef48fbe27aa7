// Netfront against a scripted backend on one thread (scripted-backend.ts): the backend maps the ring grants
// with the hypervisor-side mapper, reads requests, writes responses and posts grant returns, in whatever order
// (or misbehaviour) a test asks for.
import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { GTF_permit_access, GTF_readonly } from '../../shared/gnttab.js';
import { ETH_HLEN } from '../../shared/ether.js';
import { ipv4 } from '../../shared/inet.js';
import { XEN_PAGE_SIZE } from '../../shared/memory.js';
import {
  NETRXF_csum_blank,
  NETRXF_data_validated,
  NETRXF_extra_info,
  NETRXF_more_data,
  NETTXF_csum_blank,
  NETTXF_data_validated,
  NETTXF_extra_info,
  NETTXF_more_data,
  XEN_NETIF_EXTRA_TYPE_GSO,
  XEN_NETIF_GSO_TYPE_TCPV4,
  XEN_NETIF_RSP_DROPPED,
  XEN_NETIF_RSP_ERROR,
  XEN_NETIF_RSP_OKAY,
} from '../../shared/netif.js';
import { kRspProd } from '../../shared/ring.js';
import { LatencyHistogram, NETFRONT_POISON, NETFRONT_QUARANTINE_MS, NETFRONT_TX_PUSH_EVERY, NETFRONT_REVOKE_RETRY_MS, type TxPacket, type TxSource } from '../../frontend/netfront.js';
import { TxFrame, type Flow } from '../../frontend/traffic.js';
import { ALL_FEATURES, BE, FE_MAC, ScriptedBackend, connected, makeGuest, type GuestRig } from './scripted-backend.js';

const FLOW: Flow = { srcMac: FE_MAC, dstMac: 0x02_00_00_00_00_22, saddr: ipv4(10, 0, 0, 11), daddr: ipv4(10, 0, 0, 12), sport: 40000, dport: 9 };

/** Arbitrary bytes as a frame. */
class RawPacket implements TxPacket {
  constructor(
    readonly bytes: Uint8Array,
    readonly pageOffset = 0,
    readonly csumBlank = false,
    readonly gsoSize = 0,
  ) {}
  get len(): number {
    return this.bytes.length;
  }
  writeTo(buf: Uint8Array, off: number): void {
    buf.set(this.bytes, off);
  }
}

function bytesOf(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

function udp(payload: number, csumBlank = false, stream = 7, pos = 0): TxFrame {
  return new TxFrame().setUdp(FLOW, stream, pos, payload, csumBlank);
}

/** The frame a grant ref points at, read from the guest's table. */
function frameOf(g: GuestRig, ref: number): number {
  return g.gnttab.entries.frame(ref);
}

function auditAddsUp(g: GuestRig): boolean {
  const a = g.nf.audit();
  return a.pool + a.rings + a.tx + a.rx + a.stuck === a.total;
}

// ---------------------------------------------------------------------------------------------------------
// Connect

test('connect grants the rings writable and posts a full RX ring of writable grants, ids = ring index', (t) => {
  const { g, be } = connected();
  t.is(be.takeRx(), 256);
  const refs = new Set<number>();
  for (const r of be.rxPosted) {
    t.is(r.id, r.index & 255);
    refs.add(r.gref);
    t.is(g.gnttab.entries.flags(r.gref), GTF_permit_access, 'writable, not yet mapped');
    t.is(g.gnttab.entries.domid(r.gref), BE);
  }
  t.is(refs.size, 256);
  t.deepEqual(g.nf.audit(), { total: g.frames.length, pool: g.frames.length - 258, rings: 2, tx: 0, rx: 256, stuck: 0 });
});

test('a frames list too small for rings, RX buffers and one TX page is refused', (t) => {
  t.throws(() => makeGuest({ poolFrames: 10, rxBuffers: 8 }), {
    message: 'frames must hold at least 11 frames (2 rings, 8 RX buffers, 1 TX page) but got 10',
  });
});

// ---------------------------------------------------------------------------------------------------------
// TX requests

for (const csumBlank of [false, true]) {
  test(`a one-page frame (csum_blank ${csumBlank}): one request, size = length, read-only grant, bytes intact`, (t) => {
    const { g, be } = connected();
    const f = udp(100, csumBlank);
    t.is(g.nf.xmit(f), 'sent');
    const [p, ...rest] = be.readTx();
    t.is(rest.length, 0);
    t.is(p!.slots.length, 1);
    const s = p!.slots[0]!;
    t.is(s.size, f.len);
    t.is(s.offset, 0);
    t.is(s.flags, csumBlank ? NETTXF_csum_blank | NETTXF_data_validated : 0);
    t.deepEqual(p!.data, f.toBytes());
    t.is(g.gnttab.entries.flags(s.gref) & ~0x18, GTF_permit_access | GTF_readonly);
    t.is(g.nf.grantsOutstanding, 1);
  });
}

testProp(
  'a frame spanning pages: one slot per page, first size = total, more_data chains, every byte intact',
  [fc.integer({ min: ETH_HLEN, max: 0xffff }), fc.integer({ min: 0, max: XEN_PAGE_SIZE - ETH_HLEN }), fc.integer()],
  (t, len, off, seed) => {
    const { g, be } = connected({ rxBuffers: 8, poolFrames: 2 + 8 + 40 });
    const bytes = bytesOf(len, seed);
    t.is(g.nf.xmit(new RawPacket(bytes, off)), 'sent');
    const [p] = be.readTx();
    const pages = Math.ceil((off + len) / XEN_PAGE_SIZE);
    t.is(p!.slots.length, pages);
    t.is(p!.extras.length, 0);
    t.is(p!.slots[0]!.size, len);
    t.is(p!.slots[0]!.offset, off);
    let left = len - Math.min(len, XEN_PAGE_SIZE - off);
    for (let k = 0; k < pages; k++) {
      const s = p!.slots[k]!;
      t.is((s.flags & NETTXF_more_data) !== 0, k < pages - 1, `slot ${k} more_data`);
      if (k > 0) {
        t.is(s.offset, 0);
        t.is(s.size, Math.min(XEN_PAGE_SIZE, left));
        left -= s.size;
      }
    }
    t.is(left, 0);
    t.is(new Set(p!.slots.map((s) => s.id)).size, pages, 'distinct ids');
    t.is(new Set(p!.refs).size, pages, 'distinct grants');
    t.deepEqual(p!.data, bytes);
    t.true(auditAddsUp(g));
  },
  { numRuns: 60 },
);

test('a large TCP send carries one GSO extra (TCPV4, size = MSS) right after the first slot; extras are answered NULL', (t) => {
  const { g, be } = connected();
  const f = new TxFrame().setTcp(FLOW, 1000, 5, 0x10, 65535, 40000, 0, 60000, 1460);
  t.is(g.nf.xmit(f), 'sent');
  const [p] = be.readTx();
  t.is(p!.extras.length, 1);
  const e = p!.extras[0]!;
  t.is(e.type, XEN_NETIF_EXTRA_TYPE_GSO);
  t.is(e.flags, 0);
  t.is(e.gso.size, 1460);
  t.is(e.gso.type, XEN_NETIF_GSO_TYPE_TCPV4);
  const first = p!.slots[0]!;
  t.is(first.flags, NETTXF_extra_info | NETTXF_more_data | NETTXF_csum_blank | NETTXF_data_validated);
  t.is(p!.indices[1], (p!.indices[0]! + 1) >>> 0, 'the extra is the second request');
  t.is(p!.slots.length, Math.ceil(f.len / XEN_PAGE_SIZE));
  t.deepEqual(p!.data, f.toBytes());
  be.respond(p!);
  t.is(g.nf.pollTx(), p!.slots.length + 1);
  t.is(g.nf.stats.txRspNull, 1);
  t.is(g.nf.stats.txRspOkay, p!.slots.length);
  t.is(g.nf.stats.txGso, 1);
});

test('without feature-gso-tcpv4 a GSO frame is dropped; without feature-sg a multi-page frame is dropped', (t) => {
  const gso = connected({ features: { ...ALL_FEATURES, gsoTcpv4: false } });
  t.is(gso.g.nf.xmit(new TxFrame().setTcp(FLOW, 1, 0, 0x10, 100, 1, 0, 3000, 1460)), 'dropped');
  t.is(gso.g.nf.xmit(new RawPacket(bytesOf(5000, 1))), 'sent', 'multi-page without GSO is fine');
  const sg = connected({ features: { ...ALL_FEATURES, sg: false } });
  t.is(sg.g.nf.xmit(new RawPacket(bytesOf(5000, 1))), 'dropped');
  t.is(sg.g.nf.xmit(new RawPacket(bytesOf(100, 1), 4000)), 'dropped', 'a small frame crossing a page needs SG too');
  t.is(sg.g.nf.xmit(new RawPacket(bytesOf(100, 1))), 'sent');
  t.is(sg.g.nf.stats.txDropped, 2);
  t.is(sg.be.readTx().length, 1);
});

// ---------------------------------------------------------------------------------------------------------
// Grant returns

testProp(
  'every returned TX page is all 0xdb, however often it was reused for frames of any size at any offset',
  [fc.array(fc.tuple(fc.integer({ min: 8, max: 9000 }), fc.nat({ max: XEN_PAGE_SIZE - ETH_HLEN }), fc.nat({ max: 3 })), { minLength: 1, maxLength: 40 })],
  (t, frames) => {
    const { g, be } = connected();
    const held: { refs: number[] }[] = [];
    for (const [payload, offset, hold] of frames) {
      const f = udp(payload, false, 7, offset);
      f.pageOffset = offset;
      t.is(g.nf.xmit(f), 'sent');
      // Return what the backend holds, keeping up to `hold` packets back so pages are reused in a shuffled order.
      const ps = be.readTx();
      for (const p of ps) be.respond(p);
      g.nf.pollTx();
      held.push(...ps);
      while (held.length > hold) {
        const p = held.shift()!;
        const pages = p.refs.map((r) => frameOf(g, r));
        t.is(be.returnGrants(p.refs), p.refs.length);
        for (const fr of pages) t.true(g.mem.frame(fr).every((b) => b === NETFRONT_POISON), `frame ${fr} is all poison`);
      }
    }
    for (const p of held.splice(0)) be.returnGrants(p.refs);
    t.is(g.nf.grantsOutstanding, 0);
  },
  { numRuns: 30 },
);

test('a TX response frees only the request id; the grant return ends access, poisons the page and reuses it', (t) => {
  const { g, be } = connected();
  const f = udp(1000);
  g.clock.advance(10);
  g.nf.xmit(f);
  const [p] = be.readTx();
  const ref = p!.refs[0]!;
  const frame = frameOf(g, ref);
  be.unmap(p!.refs); // as netback does: unmap, answer, then post the return
  be.respond(p!);
  t.is(g.nf.pollTx(), 1);
  t.is(g.nf.grantsOutstanding, 1, 'the response did not release the grant');
  t.is(g.nf.grantsAnsweredNotReturned, 1);
  t.is(g.gnttab.entries.flags(ref) & GTF_permit_access, GTF_permit_access);
  t.deepEqual(g.mem.frame(frame).subarray(0, f.len), f.toBytes(), 'the page is untouched');
  g.clock.advance(2.5);
  t.is(be.returnGrants(p!.refs), 1);
  t.is(g.gnttab.entries.flags(ref), 0, 'access ended');
  t.true(g.mem.frame(frame).every((b) => b === NETFRONT_POISON), 'poisoned');
  t.is(g.nf.grantsOutstanding, 0);
  t.is(g.nf.grantsAnsweredNotReturned, 0);
  t.is(g.nf.stats.grantsReturned, 1);
  t.is(g.nf.latency.count, 1);
  t.is(g.nf.latency.max, 2500);
  g.nf.xmit(udp(50));
  const [q] = be.readTx();
  t.is(frameOf(g, q!.refs[0]!), frame, 'the page went back to the pool and is used again');
  t.true(auditAddsUp(g));
});

test('a return may come before the response: both orders free everything', (t) => {
  const { g, be } = connected();
  g.nf.xmit(udp(100));
  const [p] = be.readTx();
  t.is(be.returnGrants(p!.refs), 1);
  t.is(g.nf.grantsOutstanding, 0);
  be.respond(p!);
  t.is(g.nf.pollTx(), 1);
  t.false(g.nf.broken);
  t.is(g.nf.audit().pool, g.frames.length - 258);
});

type Op = { kind: 'send'; len: number; off: number } | { kind: 'respond'; unmap: boolean } | { kind: 'return'; pick: number[] };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('send' as const), len: fc.integer({ min: ETH_HLEN, max: 9000 }), off: fc.integer({ min: 0, max: XEN_PAGE_SIZE - ETH_HLEN }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('respond' as const), unmap: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('return' as const), pick: fc.array(fc.nat(), { maxLength: 6 }) }) },
);

testProp(
  'a grant not returned is never reused and its page never touched, whatever order grants come back in',
  [fc.array(opArb, { minLength: 1, maxLength: 60 }), fc.integer()],
  (t, ops, seed) => {
    const { g, be } = connected({ rxBuffers: 4, poolFrames: 2 + 4 + 24 });
    // Outstanding grants: ref -> frame and the bytes the frame held when sent.
    const out = new Map<number, { frame: number; bytes: Uint8Array }>();
    const unanswered: ReturnType<ScriptedBackend['readTx']> = [];
    let n = 0;
    for (const op of ops) {
      if (op.kind === 'send') {
        const r = g.nf.xmit(new RawPacket(bytesOf(op.len, seed + n++), op.off));
        if (r !== 'sent') {
          t.is(r, 'busy');
          continue;
        }
        const [p] = be.readTx();
        unanswered.push(p!);
        for (const ref of p!.refs) {
          const frame = frameOf(g, ref);
          for (const [, o] of out) t.not(o.frame, frame, 'an outstanding page was handed out again');
          t.false(out.has(ref), 'an outstanding ref was granted again');
          out.set(ref, { frame, bytes: g.mem.frame(frame).slice() });
        }
      } else if (op.kind === 'respond') {
        // The backend may let go of the grants (unmap) before answering, as netback does; the return comes later.
        for (const p of unanswered.splice(0)) {
          if (op.unmap) be.unmap(p.refs.filter((r) => be.mapped.has(r)));
          be.respond(p);
        }
        g.nf.pollTx();
      } else {
        const refs = [...out.keys()];
        const chosen = [...new Set(op.pick.map((i) => refs[i % Math.max(1, refs.length)]!).filter((r) => r !== undefined))];
        be.returnGrants(chosen);
        for (const r of chosen) out.delete(r);
      }
      for (const [ref, o] of out) {
        t.is(g.gnttab.entries.frame(ref), o.frame);
        t.true(g.mem.frame(o.frame).every((b, i) => b === o.bytes[i]), `page of outstanding ref ${ref} changed`);
      }
      t.is(g.nf.grantsOutstanding, out.size);
      t.true(auditAddsUp(g));
      t.false(g.nf.broken, g.nf.brokenReason ?? '');
    }
  },
  { numRuns: 80 },
);

test('a returned grant the backend still maps: end access fails, the device is broken, the page kept until it can end', (t) => {
  const { g, be } = connected();
  const f = udp(300);
  g.nf.xmit(f);
  const [p] = be.readTx();
  const ref = p!.refs[0]!;
  const frame = frameOf(g, ref);
  be.respond(p!);
  g.nf.pollTx();
  t.is(be.returnGrants(p!.refs, false), 0);
  t.true(g.nf.broken);
  t.is(g.nf.brokenReason, `Grant still in use by backend domain: ref 0x${ref.toString(16)}`);
  t.is(g.nf.stats.endAccessFailures, 1);
  t.is(g.nf.audit().stuck, 1);
  t.is(g.nf.grantsOutstanding, 1);
  t.deepEqual(g.mem.frame(frame).subarray(0, f.len), f.toBytes(), 'not poisoned while the backend maps it');
  t.is(g.nf.xmit(udp(10)), 'dropped', 'a broken device sends nothing');
  t.is(g.nf.transmit(10, { maxFrameLen: 100, next: () => udp(10) }), 0);
  t.true(g.logs.some((l) => l === `alert: vif d1: Grant still in use by backend domain: ref 0x${ref.toString(16)}; Disabled for further use`));
  t.is(g.nf.retryRevokes(), 0, 'still mapped');
  be.unmap([ref]);
  t.is(g.nf.retryRevokes(), 1);
  t.true(g.mem.frame(frame).every((b) => b === NETFRONT_POISON));
  t.is(g.nf.grantsOutstanding, 0);
  t.true(auditAddsUp(g));
});

const badTx: { name: string; setup: (g: GuestRig, be: ScriptedBackend) => void; message: string }[] = [
  {
    name: 'an id beyond the ring',
    setup: (_g, be) => be.rawTxResponses([{ id: 300, status: XEN_NETIF_RSP_OKAY }]),
    message: 'tx response id 300 is invalid: expected id < 256',
  },
  {
    name: 'an id with no request pending',
    setup: (_g, be) => be.rawTxResponses([{ id: 7, status: XEN_NETIF_RSP_OKAY }]),
    message: 'tx response for inactive request id 7',
  },
  {
    name: 'an id answered twice',
    setup: (g, be) => {
      g.nf.xmit(udp(100));
      const id = be.readTx()[0]!.slots[0]!.id;
      be.rawTxResponses([
        { id, status: XEN_NETIF_RSP_OKAY },
        { id, status: XEN_NETIF_RSP_OKAY },
      ]);
    },
    message: 'tx response for inactive request id 0',
  },
  {
    name: 'an unknown status',
    setup: (_g, be) => be.rawTxResponses([{ id: be.readTx()[0]!.slots[0]!.id, status: 5 }]),
    message: 'tx response status 5 is invalid: expected -2 <= status <= 1',
  },
  {
    name: 'a response producer beyond the ring',
    setup: (_g, be) => be.tx.view.setUint32(kRspProd * 4, 300, true),
    message: 'tx rsp_prod is corrupt: expected rsp_prod - rsp_cons <= 256 but got 300',
  },
];

for (const c of badTx) {
  test(`bad TX response (${c.name}) marks the device broken`, (t) => {
    const { g, be } = connected();
    g.nf.xmit(udp(100));
    c.setup(g, be);
    g.nf.pollTx();
    t.true(g.nf.broken);
    t.is(g.nf.brokenReason, c.message);
  });
}

test('bad grant returns are counted and mark the device broken: out of range, not a TX grant, returned twice', (t) => {
  for (const [refs, message] of [
    [[5], 'grant return names ref 5: expected 8 <= ref < 1024'],
    [['rx'], 'not an outstanding TX grant'],
    [['twice'], 'not an outstanding TX grant'],
  ] as const) {
    const { g, be } = connected();
    g.nf.xmit(udp(100));
    const [p] = be.readTx();
    let batch: number[];
    if (refs[0] === 'rx') {
      be.takeRx();
      batch = [be.rxPosted[0]!.gref];
    } else if (refs[0] === 'twice') {
      be.returnGrants(p!.refs);
      batch = p!.refs;
    } else {
      batch = [refs[0]];
    }
    be.returnGrants(batch, false);
    t.true(g.nf.broken);
    t.true(g.nf.brokenReason!.endsWith(message), g.nf.brokenReason!);
    t.is(g.nf.stats.badGrantReturns, 1);
  }
});

test('TX response statuses are counted; ERROR and DROPPED are TX errors', (t) => {
  const { g, be } = connected();
  for (let i = 0; i < 3; i++) g.nf.xmit(udp(100));
  const ps = be.readTx();
  be.respond(ps[0]!, XEN_NETIF_RSP_OKAY);
  be.respond(ps[1]!, XEN_NETIF_RSP_ERROR);
  be.respond(ps[2]!, XEN_NETIF_RSP_DROPPED);
  t.is(g.nf.pollTx(), 3);
  const s = g.nf.stats;
  t.deepEqual([s.txRspOkay, s.txRspError, s.txRspDropped, s.txErrors], [1, 1, 1, 2]);
  t.is(g.nf.grantsOutstanding, 3, 'an error response does not release grants either');
});

// ---------------------------------------------------------------------------------------------------------
// Flow control and notification

test('transmit stops when the pool runs out and resumes after grants come back', (t) => {
  const { g, be } = connected({ rxBuffers: 4, poolFrames: 2 + 4 + 8 });
  const src: TxSource = { maxFrameLen: 200, next: () => udp(100) };
  // Room for a worst-case 200-byte frame is 2 pages: 8 free pages allow 7 frames.
  t.is(g.nf.transmit(100, src), 7);
  t.true(g.nf.stats.txBusy > 0);
  t.is(g.nf.transmit(100, src), 0);
  const ps = be.readTx();
  be.returnGrants(ps.slice(0, 3).flatMap((p) => p.refs));
  t.is(g.nf.transmit(100, src), 3);
});

test('the backend is notified only when req_event says so', (t) => {
  const { g, be } = connected();
  const raised0 = g.be.counters().raised;
  g.nf.xmit(udp(60));
  t.is(g.nf.stats.txNotifies, 1, 'req_event starts at 1: the first push notifies');
  t.is(g.be.counters().raised - raised0, 1);
  // The backend is busy: it asks to be woken only after many more requests.
  be.tx.unconsumedRequests();
  be.tx.setReqEvent((be.tx.reqCons + 100) >>> 0);
  for (let i = 0; i < 10; i++) g.nf.xmit(udp(60));
  const src: TxSource = { maxFrameLen: 200, next: () => udp(60) };
  t.is(g.nf.transmit(10, src), 10);
  t.is(g.nf.stats.txNotifies, 1);
  // It goes to sleep: final check arms req_event = req_cons + 1 after consuming.
  be.readTx();
  t.false(be.tx.finalCheckForRequests());
  g.nf.xmit(udp(60));
  t.is(g.nf.stats.txNotifies, 2);
  // A batch through transmit() notifies once, however many of its pushes crossed req_event.
  be.readTx();
  t.false(be.tx.finalCheckForRequests());
  t.is(g.nf.transmit(8, src), 8);
  t.is(g.nf.stats.txNotifies, 3);
  t.is(g.be.counters().raised - raised0, 3);
});

test('transmit publishes its requests every NETFRONT_TX_PUSH_EVERY frames and after the last (xmit_more)', (t) => {
  const { g, be } = connected();
  // What the backend can see each time transmit asks for the next frame: the requests published so far.
  const seen: number[] = [];
  const src: TxSource = {
    maxFrameLen: 200,
    next: () => {
      be.tx.unconsumedRequests();
      seen.push((be.tx.reqProdSnapshot - be.tx.reqCons) >>> 0);
      return udp(60);
    },
  };
  const n = 2 * NETFRONT_TX_PUSH_EVERY + 3;
  t.is(g.nf.transmit(n, src), n);
  const want = Array.from({ length: n }, (_, i) => i - (i % NETFRONT_TX_PUSH_EVERY));
  t.deepEqual(seen, want);
  be.tx.unconsumedRequests();
  t.is((be.tx.reqProdSnapshot - be.tx.reqCons) >>> 0, n, 'the last group is published before transmit returns');
  t.is(be.readTx().length, n);
});

test('the event-channel handler records the event and wakes the loop', (t) => {
  let woken = 0;
  const { g, be } = connected({ onEvent: () => woken++ });
  be.kick();
  t.is(woken, 1);
  t.true(g.nf.takeEvent());
  t.false(g.nf.takeEvent());
  t.is(g.nf.stats.events, 1);
});

testProp(
  'ring indices across the 32-bit wrap: hundreds of frames sent, answered and returned',
  [fc.integer({ min: 0xffffff00, max: 0xffffffff }), fc.integer({ min: 1, max: 40 })],
  (t, start, batch) => {
    const { g, be } = connected({ ringStartIndex: start, rxBuffers: 16, poolFrames: 2 + 16 + 80 });
    let sent = 0;
    let pos = 0;
    const src: TxSource = {
      maxFrameLen: 2000,
      next: () => {
        const f = udp(1200, false, 3, pos);
        pos += 1200 - 8;
        return f;
      },
    };
    while (sent < 600) {
      const n = g.nf.transmit(batch, src);
      sent += n;
      const ps = be.readTx();
      t.is(ps.length, n);
      for (const p of ps) {
        t.is(p.slots[0]!.size, 1242);
        be.respond(p);
      }
      t.is(g.nf.pollTx(), ps.reduce((a, p) => a + p.slots.length, 0));
      be.returnGrants(ps.flatMap((p) => p.refs));
      t.false(g.nf.broken, g.nf.brokenReason ?? '');
    }
    t.is(g.nf.grantsOutstanding, 0);
    t.is(g.nf.stats.txRspOkay, g.nf.stats.txSlots);
  },
  { numRuns: 10 },
);

// ---------------------------------------------------------------------------------------------------------
// RX

test('a received frame is verified, handed on, and its buffer re-posted with a fresh writable grant', (t) => {
  const { g, be } = connected();
  const f = udp(500).toBytes();
  be.takeRx();
  const first = be.rxPosted[0]!;
  be.deliver(f);
  be.kick();
  t.is(g.nf.pollRx(64), 1);
  t.is(g.received.length, 1);
  t.deepEqual(g.received[0], f);
  t.is(g.nf.stats.rxVerified, 1);
  t.is(g.nf.stats.rxPackets, 1);
  t.is(be.takeRx(), 1, 'one buffer re-posted');
  const again = be.rxPosted.at(-1)!;
  t.is(again.gref, first.gref);
  t.is(again.id, (first.index + 256) & 255);
  t.is(g.gnttab.entries.flags(first.gref), GTF_permit_access);
  t.true(auditAddsUp(g));
});

test('a multi-slot frame with a GSO extra is reassembled and verified', (t) => {
  const { g, be } = connected();
  const f = new TxFrame().setUdp(FLOW, 9, 100, 8900, false).toBytes();
  be.deliver(f, { offset: 0, slotBytes: 4000, gsoSize: 1448, flags: NETRXF_data_validated });
  t.is(g.nf.pollRx(64), 1);
  t.deepEqual(g.received[0], f);
  t.is(g.nf.stats.rxVerified, 1);
  t.is(g.nf.stats.rxGso, 1);
  t.is(g.nf.stats.rxExtras, 1);
  t.is(g.nf.stats.rxSlots, 4);
  t.is(be.takeRx(), 4, 'the three data buffers and the extra slot are re-posted');
});

const corrupt: { name: string; mutate: (b: Uint8Array) => void; flags: number; stat: 'rxCorruptPayloads' | 'rxChecksumErrors' | 'rxBadFrames'; error: string }[] = [
  {
    name: 'a flipped payload byte with data_validated',
    mutate: (b) => (b[100] ^= 0x01),
    flags: NETRXF_data_validated,
    stat: 'rxCorruptPayloads',
    error: `payload is corrupt at byte 58: expected 0x${patternHex(7, 50)} but got 0x${(parseInt(patternHex(7, 50), 16) ^ 1).toString(16)}`,
  },
  { name: 'a flipped payload byte, no offload flags', mutate: (b) => (b[100] ^= 0x01), flags: 0, stat: 'rxChecksumErrors', error: 'UDP checksum is wrong' },
  {
    name: 'a payload poisoned by its sender (csum_blank)',
    mutate: (b) => b.fill(NETFRONT_POISON, 60),
    flags: NETRXF_csum_blank | NETRXF_data_validated,
    stat: 'rxCorruptPayloads',
    error: `payload is corrupt at byte 18: expected 0x${patternHex(7, 10)} but got 0xdb`,
  },
  { name: 'a poisoned IPv4 header', mutate: (b) => b.fill(NETFRONT_POISON, 14, 34), flags: NETRXF_data_validated, stat: 'rxBadFrames', error: 'IPv4 version is corrupt: expected 4 but got 13' },
];

function patternHex(stream: number, pos: number): string {
  return ((Math.imul(pos, 251) + Math.imul(pos >>> 8, 13) + Math.imul(stream, 101)) & 0xff).toString(16);
}

for (const c of corrupt) {
  test(`RX verification catches ${c.name}`, (t) => {
    const { g, be } = connected();
    const f = udp(500, false, 7, 0).toBytes();
    c.mutate(f);
    be.deliver(f, { flags: c.flags });
    t.is(g.nf.pollRx(64), 1);
    t.is(g.nf.stats[c.stat], 1);
    t.is(g.nf.stats.rxVerified, 0);
    t.is(g.nf.rxLastError, c.error);
    t.is(g.received.length, 0, 'a bad frame is not handed on');
    t.is(be.takeRx(), 1, 'its buffer is re-posted anyway');
  });
}

const badRx: { name: string; rsps: { offset: number; flags: number; status: number; id?: number }[]; error: string; slots: number }[] = [
  { name: 'an error status', rsps: [{ offset: 0, flags: 0, status: -1 }], error: 'rx response status -1 is an error', slots: 1 },
  { name: 'offset + size beyond the page', rsps: [{ offset: 100, flags: 0, status: 4000 }], error: 'rx response offset+status is corrupt: expected <= 4096 but got 4100', slots: 1 },
  { name: 'an id that is not the slot', rsps: [{ offset: 0, flags: 0, status: 60, id: 9 }], error: 'rx response id 9 is invalid: expected 0', slots: 1 },
  { name: 'a missing extra', rsps: [{ offset: 0, flags: NETRXF_extra_info, status: 60 }], error: 'Missing extra info', slots: 1 },
  { name: 'more_data on the last response', rsps: [{ offset: 0, flags: NETRXF_more_data, status: 60 }], error: 'Need more slots', slots: 1 },
  {
    name: 'a chain of 21 slots',
    rsps: Array.from({ length: 21 }, (_, i) => ({ offset: 0, flags: i < 20 ? NETRXF_more_data : 0, status: 100 })),
    error: 'Too many slots: 20 > 19',
    slots: 21,
  },
];

for (const c of badRx) {
  test(`a malformed RX response (${c.name}) drops the packet and re-posts its buffers`, (t) => {
    const { g, be } = connected();
    be.rawRxResponses(c.rsps);
    t.is(g.nf.pollRx(64), 1);
    t.is(g.nf.stats.rxErrors, 1);
    t.is(g.nf.stats.rxDropped, 1);
    t.is(g.nf.stats.rxPackets, 0);
    t.is(g.nf.rxLastError, c.error);
    t.is(g.nf.stats.rxSlots, c.slots);
    t.false(g.nf.broken);
    t.is(be.takeRx(), c.slots, 'every buffer goes back on the ring');
    t.is(g.nf.audit().rx, 256);
  });
}

test('an RX response producer beyond the ring marks the device broken', (t) => {
  const { g, be } = connected();
  be.rx.view.setUint32(kRspProd * 4, 257, true);
  t.is(g.nf.pollRx(64), 0);
  t.true(g.nf.broken);
  t.is(g.nf.brokenReason, 'rx rsp_prod is corrupt: expected rsp_prod - rsp_cons <= 256 but got 257');
});

test('an RX buffer the backend still maps when it answers: end access fails and the device is broken', (t) => {
  const { g, be } = connected();
  be.takeRx();
  const gref = be.rxPosted[0]!.gref;
  be.mapData(gref, false);
  be.deliver(udp(100).toBytes());
  t.is(g.nf.pollRx(64), 1);
  t.true(g.nf.broken);
  t.is(g.nf.brokenReason, `Grant still in use by backend domain: rx ref 0x${gref.toString(16)}`);
  t.is(g.nf.audit().stuck, 1);
  t.true(auditAddsUp(g));
});

// ---------------------------------------------------------------------------------------------------------
// Teardown and reconnect

test('disconnect reclaims what the backend let go, keeps what it maps, accepts late returns; reconnect starts clean', (t) => {
  const { g, be } = connected();
  for (let i = 0; i < 3; i++) g.nf.xmit(udp(100 + i));
  const ps = be.readTx();
  be.unmap(ps[0]!.refs); // let go without returning
  const stuck = g.nf.disconnect();
  t.is(g.nf.stats.grantsReclaimed, 1);
  t.is(stuck, 2 + 2, 'two TX pages and both ring pages are still mapped');
  t.is(g.nf.audit().rx, 0);
  t.is(g.nf.eventChannel, -1);
  const st = g.host.status(1, be.rings.eventChannel);
  t.true(st.ok && st.value.status === 0, 'port closed');
  // The old backend returns one of them later, and dies with the rest.
  t.is(be.returnGrants(ps[1]!.refs), 1);
  t.is(g.nf.stats.grantsReturned, 1);
  be.unmap(ps[2]!.refs);
  be.mapper.unmap(0); // ring handles were the first two maps
  be.mapper.unmap(1);
  t.is(g.nf.retryRevokes(), 3);
  t.deepEqual(g.nf.audit(), { total: g.frames.length, pool: g.frames.length, rings: 0, tx: 0, rx: 0, stuck: 0 });
  t.is(g.nf.grantsOutstanding, 0);
  t.is(g.nf.stats.grantsGranted, g.nf.stats.grantsReturned + g.nf.stats.grantsReclaimed);
  // Reconnect to a fresh backend.
  const rings = g.nf.setupRings();
  t.true(rings.ok);
  const be2 = new ScriptedBackend(g, rings.ok ? rings.value : (undefined as never));
  g.nf.connect(ALL_FEATURES);
  t.is(g.nf.xmit(udp(64)), 'sent');
  t.is(be2.readTx().length, 1);
  t.is(be2.takeRx(), 256);
});

test('a late return from the old backend names a held ref: accepted, and no grant of the new connection reuses it', (t) => {
  const { g, be } = connected();
  g.nf.xmit(udp(100));
  const [old] = be.readTx();
  const oldRef = old!.refs[0]!;
  be.unmap(old!.refs); // the old backend let go; its return is still on its way
  g.nf.disconnect();
  t.is(g.nf.stats.grantsReclaimed, 1);
  t.is(g.nf.quarantinedRefs, 1);
  const rings = g.nf.setupRings();
  if (!rings.ok) return t.fail(rings.error);
  const be2 = new ScriptedBackend(g, rings.value);
  g.nf.connect(ALL_FEATURES);
  for (let i = 0; i < 20; i++) g.nf.xmit(udp(100 + i));
  const fresh = be2.readTx();
  t.false(fresh.some((p) => p.refs.includes(oldRef)), 'the held ref was not granted again');
  t.is(g.nf.handleGrantReturns([oldRef]), 0);
  t.is(g.nf.stats.lateGrantReturns, 1);
  t.is(g.nf.stats.badGrantReturns, 0);
  t.false(g.nf.broken);
  t.is(g.nf.quarantinedRefs, 0);
  t.is(g.nf.grantsOutstanding, 20, 'the new connection\'s grants are untouched');
  for (const p of fresh) t.deepEqual(g.mem.frame(frameOf(g, p.refs[0]!)).subarray(0, p.data.length), p.data);
});

test('stuck grants are retried every second; held refs are released after NETFRONT_QUARANTINE_MS; then the timer stops', (t) => {
  const { g, be } = connected();
  g.nf.xmit(udp(100));
  g.nf.xmit(udp(200));
  const [p0] = be.readTx();
  be.unmap(p0!.refs);
  t.is(g.nf.disconnect(), 3, 'one TX page and both ring pages are still mapped');
  t.is(g.nf.quarantinedRefs, 1);
  be.close(); // the backend finally lets go of everything, without returning anything
  g.clock.advance(NETFRONT_REVOKE_RETRY_MS);
  t.is(g.nf.audit().stuck, 0);
  t.is(g.nf.quarantinedRefs, 2, 'the orphan ended by the retry is held too');
  t.is(g.nf.stats.grantsReclaimed, 2);
  g.clock.advance(NETFRONT_QUARANTINE_MS - NETFRONT_REVOKE_RETRY_MS);
  t.is(g.nf.quarantinedRefs, 1, 'the first held ref is released after its time');
  g.clock.advance(NETFRONT_REVOKE_RETRY_MS);
  t.is(g.nf.quarantinedRefs, 0);
  t.is(g.gnttab.freeCount, g.gnttab.nrEntries - 8, 'every ref is free again');
  t.is(g.clock.nextDeadline(), Infinity, 'no timer left');
  t.deepEqual(g.nf.audit(), { total: g.frames.length, pool: g.frames.length, rings: 0, tx: 0, rx: 0, stuck: 0 });
});

test('setupRings resets broken, as talk_to_netback does on reconnect', (t) => {
  const { g, be } = connected();
  g.nf.xmit(udp(100));
  be.rawTxResponses([{ id: 1, status: 0 }]);
  g.nf.pollTx();
  t.true(g.nf.broken);
  g.nf.disconnect();
  t.true(g.nf.setupRings().ok);
  t.false(g.nf.broken);
  t.is(g.nf.brokenReason, null);
});

// ---------------------------------------------------------------------------------------------------------
// Latency histogram

testProp(
  'latency quantiles are bucket upper bounds: never below the true quantile, at most 1/16 above it',
  [fc.array(fc.double({ min: 1, max: 1e9, noNaN: true }), { minLength: 1, maxLength: 300 }), fc.double({ min: 0.01, max: 1, noNaN: true })],
  (t, samples, q) => {
    const h = new LatencyHistogram();
    for (const s of samples) h.record(s);
    const sorted = [...samples].sort((a, b) => a - b);
    const truth = sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)]!;
    const got = h.quantile(q);
    t.true(got >= truth, `${got} < ${truth}`);
    t.true(got <= truth * (1 + 1 / 16) + 1e-9, `${got} too far above ${truth}`);
    t.is(h.count, samples.length);
  },
);
