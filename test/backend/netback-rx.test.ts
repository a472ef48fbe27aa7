import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { ETH_P_IP, writeEthHeader } from '../../shared/ether.js';
import { GNTST_bad_gntref } from '../../shared/gnttab.js';
import { IPPROTO_TCP, ipv4, writeIpv4Header, writeTcpHeader } from '../../shared/inet.js';
import { XEN_PAGE_SIZE } from '../../shared/memory.js';
import {
  NETRXF_csum_blank,
  NETRXF_data_validated,
  NETRXF_extra_info,
  NETRXF_more_data,
  RxRequest,
  XEN_NETIF_EXTRA_TYPE_GSO,
  XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
  XEN_NETIF_GSO_TYPE_TCPV4,
  type RxResponseFields,
} from '../../shared/netif.js';
import { kReqEvent, kReqProd } from '../../shared/ring.js';
import { RX_DRAIN_TIMEOUT_MS, RX_STALL_TIMEOUT_MS, XENVIF_RX_QUEUE_BYTES, rxSlotsNeeded } from '../../backend/netback-rx.js';
import { allocPage } from '../../backend/page.js';
import {
  CHECKSUM_PARTIAL,
  CHECKSUM_UNNECESSARY,
  SKB_GSO_TCPV4,
  allocSkb,
  skbAddFrag,
  skbFragListAppend,
  skbPut,
  type SkBuff,
  type SkbContext,
} from '../../backend/skbuff.js';
import { Rig, rawExtra, type TestGuest } from './netback-rig.js';

interface Piece {
  bytes: Uint8Array;
  offset?: number;
}

/** A local skb: `linear` in the head, then page frags, then an optional frag_list of such skbs. */
function mkSkb(ctx: SkbContext, linear: Uint8Array, frags: Piece[] = [], fragList: SkBuff[] = []): SkBuff {
  const skb = allocSkb(ctx, linear.length + 64);
  skb.data = 64;
  skb.tail = 64;
  const at = skbPut(skb, linear.length);
  skb.head.set(linear, at);
  skb.macHeader = skb.data;
  for (const f of frags) {
    const page = allocPage(ctx);
    const off = f.offset ?? 0;
    page.bytes.set(f.bytes, off);
    skbAddFrag(skb, page, off, f.bytes.length);
  }
  for (const c of fragList) skbFragListAppend(skb, c);
  return skb;
}

function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >>> 8)) & 0xff;
  // A unicast destination, so multicast filtering never applies by accident.
  if (n >= 6) b[0] = 0x02;
  return b;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Reassembles what the guest received from the responses, as netfront does (data slots only). */
function received(g: TestGuest, posted: { id: number; frame: number }[], rsps: RxResponseFields[], firstIndex: number): { data: Uint8Array; slots: RxResponseFields[] } {
  const frameOf = new Map(posted.map((p) => [p.id, p.frame]));
  const parts: Uint8Array[] = [];
  let extraNext = false;
  for (let i = 0; i < rsps.length; i++) {
    if (extraNext) {
      extraNext = (g.rxExtraAt(firstIndex + i).flags & 1) !== 0;
      continue;
    }
    const r = rsps[i]!;
    if ((r.flags & NETRXF_extra_info) !== 0) extraNext = true;
    if (r.status > 0) parts.push(g.mem.frame(frameOf.get(r.id)!).slice(r.offset, r.offset + r.status));
  }
  return { data: concat(parts), slots: rsps };
}

test('a linear frame lands in one posted buffer: id echoed, offset 0, status = length', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  const posted = g.postRx(4);
  const frame = bytes(60, 1);
  g.vif.startXmit(mkSkb(rig.ctx, frame));
  t.is(g.vif.rxAction(), 1);
  const rs = g.rxResponses();
  t.deepEqual(rs, [{ id: posted[0]!.id, offset: 0, flags: 0, status: 60 }]);
  t.deepEqual(g.mem.frame(posted[0]!.frame).slice(0, 60), frame);
  t.is(g.rxPort.notifies, 1);
  t.is(g.vif.stats.txPackets, 1);
  t.is(g.vif.stats.txBytes, 60);
  t.is(g.vif.rx!.queuedPackets, 0);
});

test('a 9000-byte frame with frags spans three buffers with more_data; each response in its request slot', (t) => {
  const rig = new Rig({ vif: { mtu: 9000 } });
  const g = rig.guest(1);
  const posted = g.postRx(3);
  const parts = [bytes(100, 2), bytes(3000, 3), bytes(4096, 4), bytes(1804, 5)];
  const skb = mkSkb(rig.ctx, parts[0]!, [{ bytes: parts[1]!, offset: 1000 }, { bytes: parts[2]! }, { bytes: parts[3]!, offset: 7 }]);
  skb.ipSummed = CHECKSUM_PARTIAL;
  g.vif.startXmit(skb);
  t.is(g.vif.rxAction(), 1);
  const rs = g.rxResponses();
  t.deepEqual(
    rs.map((r) => [r.id, r.status, r.flags]),
    [
      [posted[0]!.id, 4096, NETRXF_more_data | NETRXF_csum_blank | NETRXF_data_validated],
      [posted[1]!.id, 4096, NETRXF_more_data],
      [posted[2]!.id, 808, 0],
    ],
  );
  t.deepEqual(received(g, posted, rs, 0).data, concat(parts));
});

test('GSO for a frontend that takes it: the extra goes in slot 1, slot 0 says extra_info', (t) => {
  const rig = new Rig();
  const g = rig.guest(1, { features: { canSg: true, gsoMask: 1 << XEN_NETIF_GSO_TYPE_TCPV4 } });
  const posted = g.postRx(4);
  const parts = [bytes(128, 6), bytes(4000, 7), bytes(2000, 8)];
  const skb = mkSkb(rig.ctx, parts[0]!, [{ bytes: parts[1]! }, { bytes: parts[2]! }]);
  skb.shinfo.gsoSize = 1448;
  skb.shinfo.gsoType = SKB_GSO_TCPV4;
  skb.ipSummed = CHECKSUM_UNNECESSARY;
  t.is(rxSlotsNeeded(skb), 3);
  g.vif.startXmit(skb);
  t.is(g.vif.rxAction(), 1);
  const rs = g.rxResponses();
  t.is(rs.length, 3);
  t.is(rs[0]!.flags, NETRXF_more_data | NETRXF_data_validated | NETRXF_extra_info);
  const e = g.rxExtraAt(1);
  t.is(e.type, XEN_NETIF_EXTRA_TYPE_GSO);
  t.is(e.gso.size, 1448);
  t.is(e.gso.type, XEN_NETIF_GSO_TYPE_TCPV4);
  t.is(e.flags, 0);
  t.is(rs[2]!.id, posted[2]!.id);
  t.is(rs[2]!.status, 6128 - 4096);
  t.deepEqual(received(g, posted, rs, 0).data, concat(parts));
});

function tcpGsoFrame(payload: number): Uint8Array {
  const buf = new Uint8Array(54 + payload);
  writeEthHeader(buf, 0, 0x020000000002, 0x020000000001, ETH_P_IP);
  writeIpv4Header(buf, 14, { totalLen: 40 + payload, id: 1, ttl: 64, proto: IPPROTO_TCP, saddr: ipv4(10, 0, 0, 1), daddr: ipv4(10, 0, 0, 2) });
  writeTcpHeader(buf, 34, { sport: 1, dport: 2, seq: 100, ack: 0, flags: 0x10, window: 1000 });
  for (let i = 0; i < payload; i++) buf[54 + i] = i & 0xff;
  return buf;
}

test('GSO for a frontend that does not take it: segmented in software before the queue', (t) => {
  const rig = new Rig();
  const g = rig.guest(1, { features: { canSg: true, gsoMask: 0 } });
  const posted = g.postRx(8);
  const f = tcpGsoFrame(3000);
  const skb = mkSkb(rig.ctx, f.subarray(0, 200), [{ bytes: f.subarray(200) }]);
  skb.shinfo.gsoSize = 1000;
  skb.shinfo.gsoType = SKB_GSO_TCPV4;
  skb.ipSummed = CHECKSUM_PARTIAL;
  g.vif.startXmit(skb);
  t.is(g.vif.stats.rxGsoSegmented, 1);
  t.is(g.vif.rx!.queuedPackets, 3);
  t.is(g.vif.rxAction(), 3);
  const rs = g.rxResponses();
  t.deepEqual(rs.map((r) => r.status), [1054, 1054, 1054]);
  for (const r of rs) t.is(r.flags & NETRXF_extra_info, 0);
  // Each segment carries its slice of the payload after fresh headers.
  const seg1 = g.mem.frame(posted[1]!.frame);
  t.deepEqual(seg1.slice(54, 1054), f.slice(54 + 1000, 54 + 2000));
});

test('guest to guest: a foreign frag is copied straight from the source grant, which then comes back', (t) => {
  const copied: string[] = [];
  const rig = new Rig({
    vif: { mtu: 9000 },
    events: { mapped: () => {}, returned: () => {}, copied: (domid, gref, len) => copied.push(`${domid}:${gref}:${len}`) },
  });
  const a = rig.guest(1);
  const b = rig.guest(2);
  const p = a.send([{ size: 3000, offset: 50 }]);
  a.vif.txAction();
  const skb = rig.held.pop()!;
  t.not(skb.shinfo.frags[0]!.page.foreign, null);
  b.vif.startXmit(skb);
  t.deepEqual(a.txResponses(), [], 'the source grant is pinned while B has not received it');
  const posted = b.postRx(2);
  const before = rig.mapper.stats().copies;
  t.is(b.vif.rxAction(), 1);
  t.is(rig.mapper.stats().copies - before, 2, 'one op from the linear head, one from the source gref');
  t.true(copied.includes(`1:${p.grefs[0]}:${3000 - 128}`), 'the frag was read through A\'s grant, not B\'s copy of a mapping');
  t.deepEqual(received(b, posted, b.rxResponses(), 0).data, p.bytes);
  t.is(a.vif.flushDealloc(), 1);
  t.deepEqual(a.txResponses(), [{ id: p.ids[0], status: 0 }]);
  t.is(rig.mapper.stats().liveHandles, 0);
});

test('a failed copy puts the GNTST code in that slot\'s status', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  g.rx.putRequest(RxRequest, { id: 77, gref: 999_999 });
  g.rx.pushRequests();
  g.vif.startXmit(mkSkb(rig.ctx, bytes(100, 9)));
  g.vif.rxAction();
  const rs = g.rxResponses();
  t.deepEqual(rs, [{ id: 77, offset: 0, flags: 0, status: GNTST_bad_gntref }]);
  t.is(g.vif.stats.rxCopyErrors, 1);
});

test('withheld requests: a frame that needs 3 buffers waits with 2 posted, and asks to be woken', (t) => {
  const rig = new Rig({ vif: { mtu: 9000 } });
  const g = rig.guest(1);
  g.postRx(2);
  g.vif.startXmit(mkSkb(rig.ctx, bytes(100, 1), [{ bytes: bytes(4096, 2) }, { bytes: bytes(4000, 3) }]));
  t.is(g.vif.rxAction(), 0);
  t.deepEqual(g.rxResponses(), []);
  const words = new Int32Array(g.mem.sab, XEN_PAGE_SIZE, 4);
  t.is(Atomics.load(words, kReqEvent), Atomics.load(words, kReqProd) + 1, 'req_event = req_prod + 1');
  t.true(g.rx.isFull() === false);
  g.rx.putRequest(RxRequest, { id: 500, gref: g.grant(false)[0] });
  t.true(g.rx.pushRequestsAndCheckNotify(), 'the next request wakes the backend');
  t.is(g.vif.rxAction(), 1);
  t.is(g.rxResponses().length, 3);
});

test('XSA-392: the RX queue stops at 512 KiB; the rest is dropped and counted', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  const n = 400;
  for (let i = 0; i < n; i++) g.vif.startXmit(mkSkb(rig.ctx, bytes(1500, i)));
  const accepted = Math.ceil(XENVIF_RX_QUEUE_BYTES / 1500);
  t.is(g.vif.rx!.queuedPackets, accepted);
  t.is(g.vif.stats.rxQueueFull, n - accepted);
  t.is(g.vif.stats.txDropped, n - accepted);
  t.true(g.vif.rx!.queuedBytes < XENVIF_RX_QUEUE_BYTES + 1500);
  g.vif.rx!.purge();
  t.is(g.vif.rx!.queuedBytes, 0);
});

test('drain timeout (drop): a receiver that posts nothing cannot pin the sender\'s grants past 10 s', (t) => {
  const rig = new Rig({ vif: { mtu: 9000 } });
  const a = rig.guest(1);
  const b = rig.guest(2);
  const p = a.send([{ size: 2000 }]);
  a.vif.txAction();
  b.vif.startXmit(rig.held.pop()!);
  rig.clock.advance(RX_DRAIN_TIMEOUT_MS - 1);
  b.vif.rxAction();
  t.is(b.vif.rx!.queuedPackets, 1);
  t.is(a.vif.flushDealloc(), 0);
  rig.clock.advance(1);
  t.is(b.vif.nextDeadline(), rig.clock.now());
  b.vif.rxAction();
  t.is(b.vif.rx!.queuedPackets, 0);
  t.is(b.vif.stats.rxDropped, 1);
  t.is(a.vif.flushDealloc(), 1);
  t.deepEqual(a.txResponses(), [{ id: p.ids[0], status: 0 }]);
  rig.oracle.checkQuiescent();
  t.deepEqual(rig.oracle.report.violations, []);
});

test('drain timeout (orphan): the frags are copied out, the grants come back, the frame is still delivered', (t) => {
  const rig = new Rig({ vif: { mtu: 9000, rxDrainPolicy: 'orphan' } });
  const a = rig.guest(1);
  const b = rig.guest(2);
  const p = a.send([{ size: 2000 }, { size: 3000 }]);
  a.vif.txAction();
  b.vif.startXmit(rig.held.pop()!);
  rig.clock.advance(RX_DRAIN_TIMEOUT_MS);
  b.vif.rxAction();
  t.is(b.vif.stats.rxDrainOrphaned, 1);
  t.is(b.vif.rx!.queuedPackets, 1);
  t.is(b.vif.nextDeadline(), Infinity, 'an orphaned frame has no deadline left');
  t.is(a.vif.flushDealloc(), 2);
  t.is(rig.mapper.stats().liveHandles, 0);
  rig.clock.advance(5 * RX_DRAIN_TIMEOUT_MS);
  b.vif.rxAction();
  t.is(b.vif.stats.rxDrainOrphaned, 1, 'orphaned once');
  const posted = b.postRx(2);
  t.is(b.vif.rxAction(), 1);
  t.deepEqual(received(b, posted, b.rxResponses(), 0).data, p.bytes);
  rig.oracle.checkQuiescent();
  t.deepEqual(rig.oracle.report.violations, []);
});

test('without feature-rx-notify the drain timeout is 30 ms and there is no stall detection', (t) => {
  const rig = new Rig();
  const g = rig.guest(1, { features: { rxNotify: false } });
  g.vif.startXmit(mkSkb(rig.ctx, bytes(100, 1)));
  rig.clock.advance(30);
  g.vif.rxAction();
  t.is(g.vif.stats.rxDropped, 1);
  rig.clock.advance(RX_STALL_TIMEOUT_MS * 2);
  g.vif.startXmit(mkSkb(rig.ctx, bytes(100, 1)));
  g.vif.rxAction();
  t.true(g.vif.carrier);
});

test('stall: 60 s without enough requests turns the carrier off; new requests turn it back on', (t) => {
  const rig = new Rig({ vif: { rxDrainTimeoutMs: 10 * RX_STALL_TIMEOUT_MS } });
  const g = rig.guest(1);
  g.vif.startXmit(mkSkb(rig.ctx, bytes(100, 1)));
  rig.clock.advance(RX_STALL_TIMEOUT_MS);
  g.vif.rxAction();
  t.true(g.vif.carrier);
  rig.clock.advance(1);
  g.vif.rxAction();
  t.false(g.vif.carrier);
  t.true(rig.logs.includes('info: vif1.0: Guest Rx stalled'));
  g.vif.startXmit(mkSkb(rig.ctx, bytes(100, 2)));
  t.is(g.vif.stats.txDropped, 1, 'no carrier: dropped at the door');
  g.postRx(1);
  g.vif.rxAction();
  t.true(g.vif.carrier);
  t.is(g.rxResponses().length, 1);
});

test('multicast control: group frames pass only for addresses the guest added; broadcast always', (t) => {
  const rig = new Rig();
  const g = rig.guest(1, { features: { multicastControl: true } });
  g.postRx(8);
  const group = bytes(60, 1);
  group.set([0x01, 0x00, 0x5e, 0, 0, 1], 0);
  const bcast = bytes(60, 2);
  bcast.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 0);
  g.vif.startXmit(mkSkb(rig.ctx, group));
  g.vif.startXmit(mkSkb(rig.ctx, bcast));
  t.is(g.vif.stats.txDropped, 1);
  g.send([{ size: 0, gref: 0 }], { extras: [rawExtra(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, [0x01, 0x00, 0x5e, 0, 0, 1])] });
  g.vif.txAction();
  g.vif.startXmit(mkSkb(rig.ctx, group));
  t.is(g.vif.rx!.queuedPackets, 2);
  t.is(g.vif.rxAction(), 2);
});

test('a disabled or disconnected vif drops what the stack sends it', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  g.vif.fatal('test');
  g.vif.startXmit(mkSkb(rig.ctx, bytes(100, 1)));
  t.is(g.vif.stats.txDropped, 1);
  t.is(g.vif.rxAction(), 0);
  const h = rig.guest(2);
  h.vif.beginDisconnect();
  h.vif.startXmit(mkSkb(rig.ctx, bytes(100, 1)));
  t.is(h.vif.stats.txDropped, 1);
  t.is(rig.ctx.stats.skbAllocs, rig.ctx.stats.skbFrees, 'every dropped skb was freed');
});

test('an over-MTU frame without GSO is dropped', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  g.vif.startXmit(mkSkb(rig.ctx, bytes(1515, 1)));
  t.is(g.vif.stats.txDropped, 1);
  g.vif.startXmit(mkSkb(rig.ctx, bytes(1514, 1)));
  t.is(g.vif.rx!.queuedPackets, 1);
});

testProp(
  'any skb shape (head, frags at any offset, a frag_list) arrives intact in ceil(len/4096) buffers',
  [
    fc.integer({ min: 14, max: 3000 }),
    fc.array(fc.record({ size: fc.integer({ min: 1, max: 4096 }), off: fc.double({ min: 0, max: 1, noNaN: true }) }), { maxLength: 6 }),
    fc.array(fc.integer({ min: 1, max: 5000 }), { maxLength: 3 }),
  ],
  (t, headLen, frags, children) => {
    const rig = new Rig({ frames: 120 });
    const g = rig.guest(1);
    const parts: Uint8Array[] = [bytes(headLen, 1)];
    const pieces: Piece[] = frags.map((f, i) => {
      const b = bytes(f.size, i + 10);
      parts.push(b);
      return { bytes: b, offset: Math.floor(f.off * (XEN_PAGE_SIZE - f.size)) };
    });
    const kids = children.map((n, i) => {
      const b = bytes(n, i + 50);
      parts.push(b);
      return mkSkb(rig.ctx, b);
    });
    const skb = mkSkb(rig.ctx, parts[0]!, pieces, kids);
    const len = skb.len;
    skb.macHeader = skb.data;
    const posted = g.postRx(40);
    // Bypass the MTU check: queue directly, as a GSO-capable path would.
    t.true(g.vif.rx!.queueTail(skb));
    t.is(g.vif.rxAction(), 1);
    const rs = g.rxResponses();
    t.is(rs.length, Math.ceil(len / XEN_PAGE_SIZE));
    rs.forEach((r, i) => {
      t.is(r.id, posted[i]!.id);
      t.is(r.flags & NETRXF_more_data, i < rs.length - 1 ? NETRXF_more_data : 0);
    });
    t.deepEqual(received(g, posted, rs, 0).data, concat(parts));
    t.is(rig.ctx.stats.skbAllocs, rig.ctx.stats.skbFrees);
  },
  { numRuns: 100 },
);
