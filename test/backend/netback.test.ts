import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, writeEthHeader } from '../../shared/ether.js';
import { GNTST_okay } from '../../shared/gnttab.js';
import { IPPROTO_TCP, IPPROTO_UDP, csumFold16, get16, ipv4, writeIpv4Header, writeTcpHeader, writeUdpHeader } from '../../shared/inet.js';
import { XEN_PAGE_SIZE } from '../../shared/memory.js';
import {
  NETTXF_csum_blank,
  NETTXF_data_validated,
  NETTXF_extra_info,
  NETTXF_more_data,
  XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
  XEN_NETIF_EXTRA_TYPE_MCAST_DEL,
  XEN_NETIF_GSO_TYPE_TCPV4,
  XEN_NETIF_GSO_TYPE_TCPV6,
  XEN_NETIF_RSP_ERROR,
  XEN_NETIF_RSP_NULL,
  XEN_NETIF_RSP_OKAY,
  TxRequest,
  type ExtraInfoFields,
} from '../../shared/netif.js';
import { parseGrantReturnMessage } from '../../shared/grant-return.js';
import { MAX_PENDING_REQS, NET_SKB_PAD } from '../../backend/netback.js';
import { naive } from '../../backend/release.js';
import {
  allocSkb as allocSkbReal,
  CHECKSUM_NONE,
  CHECKSUM_PARTIAL,
  CHECKSUM_UNNECESSARY,
  MAX_SKB_FRAGS,
  SKB_GSO_TCPV4,
  SKB_GSO_TCPV6,
  kfreeSkb,
  pskbCopy,
  skbClone,
  skbHeadlen,
  skbOrphanFrags,
} from '../../backend/skbuff.js';
import { Rig, gsoExtra, rawExtra, type SlotSpec, type TestGuest } from './netback-rig.js';

const OK = XEN_NETIF_RSP_OKAY;
const ERR = XEN_NETIF_RSP_ERROR;

function sortedIds(rs: { id: number; status: number }[]): string[] {
  return rs.map((r) => `${r.id}:${r.status}`).sort();
}

function expect(ids: number[], status: number): string[] {
  return ids.map((id) => `${id}:${status}`).sort();
}

/** Frees what the stack holds, flushes every vif's dealloc ring, and checks the oracle saw no violation. */
function drain(rig: Rig): void {
  rig.freeAll();
  for (const g of rig.guests) g.vif.flushDealloc();
}

function assertClean(t: { is: (a: unknown, b: unknown, m?: string) => void; deepEqual: (a: unknown, b: unknown, m?: string) => void }, rig: Rig): void {
  rig.oracle.step = 1_000_000;
  rig.oracle.checkQuiescent();
  const r = rig.oracle.report;
  t.deepEqual(r.violations.map((v) => v.message), [], 'oracle violations');
  t.is(rig.mapper.stats().liveHandles, 0, 'grants still mapped');
}

// ---------------------------------------------------------------------------------------------------------
// Good packets

test('a single-slot packet under 128 bytes is copied whole and answered at once', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  const p = g.send([{ size: 60, offset: 7 }]);
  t.is(g.vif.txAction(), 1);
  t.is(rig.held.length, 1);
  const skb = rig.held[0]!;
  t.is(skb.len, 60);
  t.is(skbHeadlen(skb), 60);
  t.is(skb.shinfo.nrFrags, 0);
  t.deepEqual(Rig.bytesOf(skb), p.bytes);
  t.is(skb.macHeader, skb.data);
  t.is(skb.data, NET_SKB_PAD);
  t.deepEqual(g.txResponses(), [{ id: p.ids[0], status: OK }]);
  t.is(g.txPort.notifies, 1);
  t.deepEqual(g.notices.grefs(), [p.grefs[0]], 'the copied slot\'s grant is done with once answered');
  t.is(g.vif.stats.txZerocopySent, 0);
  drain(rig);
  assertClean(t, rig);
});

test('a 1000-byte slot: 128 bytes copied, the rest a foreign frag answered only after the stack frees it', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  const p = g.send([{ size: 1000, offset: 100 }]);
  t.is(g.vif.txAction(), 1);
  const skb = rig.held[0]!;
  t.is(skbHeadlen(skb), 128);
  t.is(skb.shinfo.nrFrags, 1);
  const f = skb.shinfo.frags[0]!;
  t.is(f.offset, 228);
  t.is(f.size, 872);
  t.deepEqual(f.page.foreign, { domid: 1, gref: p.grefs[0] });
  t.deepEqual(Rig.bytesOf(skb), p.bytes);
  t.deepEqual(g.txResponses(), [], 'no response while the stack holds the page');
  t.is(g.vif.flushDealloc(), 0);
  t.deepEqual(g.txResponses(), []);
  t.is(g.vif.stats.txZerocopySent, 1);
  t.is(g.vif.tx!.inflightPackets, 1);

  kfreeSkb(rig.held.pop()!);
  t.deepEqual(g.txResponses(), [], 'freed but not flushed: still nothing');
  t.is(g.vif.flushDealloc(), 1);
  t.deepEqual(g.txResponses(), [{ id: p.ids[0], status: OK }]);
  t.is(g.notices.messages.length, 1);
  const m = parseGrantReturnMessage(g.notices.messages[0]);
  t.true(m.ok);
  if (m.ok) {
    t.deepEqual(Array.from(m.value.grefs), [p.grefs[0]]);
    t.is(m.value.backend, 0);
    t.is(m.value.seq, 0);
  }
  t.is(g.vif.stats.txZerocopySuccess, 1);
  t.is(g.vif.tx!.inflightPackets, 0);
  t.true(g.table.endForeignAccessRef(p.grefs[0]!), 'the guest can revoke the grant once answered');
  assertClean(t, rig);
});

test('multi-slot: every mapped slot is answered once, after the free, echoing its id', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  const p = g.send([{ size: 300 }, { size: 4096 }, { size: 1000, offset: 3000 }, { size: 17, offset: 5 }]);
  g.vif.txAction();
  const skb = rig.held[0]!;
  t.is(skb.len, 300 + 4096 + 1000 + 17);
  t.is(skbHeadlen(skb), 128);
  t.deepEqual(
    Array.from({ length: skb.shinfo.nrFrags }, (_, i) => [skb.shinfo.frags[i]!.offset, skb.shinfo.frags[i]!.size]),
    [[128, 172], [0, 4096], [3000, 1000], [5, 17]],
  );
  t.deepEqual(Rig.bytesOf(skb), p.bytes);
  t.deepEqual(g.txResponses(), []);
  drain(rig);
  t.deepEqual(sortedIds(g.txResponses()), expect(p.ids, OK));
  t.deepEqual(g.notices.grefs().sort((a, b) => a - b), [...p.grefs].sort((a, b) => a - b));
  t.is(g.notices.messages.length, 1, 'one notice per dealloc batch');
  assertClean(t, rig);
});

test('XSA-423: the 128-byte header spans tiny slots; fully copied slots are answered at once', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  const p = g.send([{ size: 20 }, { size: 50, offset: 4000 }, { size: 100, offset: 9 }, { size: 30 }]);
  g.vif.txAction();
  const skb = rig.held[0]!;
  t.is(skbHeadlen(skb), 128);
  t.is(skb.shinfo.nrFrags, 2);
  t.deepEqual([skb.shinfo.frags[0]!.offset, skb.shinfo.frags[0]!.size], [9 + 58, 42]);
  t.deepEqual(Rig.bytesOf(skb), p.bytes);
  t.deepEqual(sortedIds(g.txResponses()), expect(p.ids.slice(0, 2), OK), 'slots 0 and 1 were copied whole');
  drain(rig);
  t.deepEqual(sortedIds(g.txResponses()), expect(p.ids.slice(2), OK));
  assertClean(t, rig);
});

test('XSA-432: a header copy crossing a local page boundary is split in two copy ops', (t) => {
  const rig = new Rig({ vif: { txHeadroom: XEN_PAGE_SIZE - 50 } });
  const g = rig.guest(1);
  const before = rig.mapper.stats().copies;
  const p = g.send([{ size: 700, offset: 3 }]);
  t.is(g.vif.txAction(), 1);
  t.is(rig.mapper.stats().copyFailures, 0);
  t.is(rig.mapper.stats().copies - before, 2, '50 bytes up to the page end, then 78');
  const skb = rig.held[0]!;
  t.is(skb.data, XEN_PAGE_SIZE - 50);
  t.deepEqual(Rig.bytesOf(skb), p.bytes);
  drain(rig);
  t.deepEqual(sortedIds(g.txResponses()), expect(p.ids, OK));
  assertClean(t, rig);
});

test('XSA-432: with 17 or more frags the whole first slot is copied so the rest fits', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  const slots: SlotSpec[] = [{ size: 1500 }];
  for (let i = 0; i < 17; i++) slots.push({ size: 100 });
  const p = g.send(slots);
  g.vif.txAction();
  const skb = rig.held[0]!;
  t.is(skbHeadlen(skb), 1500);
  t.is(skb.shinfo.nrFrags, 17);
  t.deepEqual(Rig.bytesOf(skb), p.bytes);
  t.deepEqual(sortedIds(g.txResponses()), expect([p.ids[0]!], OK));
  drain(rig);
  t.deepEqual(sortedIds(g.txResponses()), expect(p.ids.slice(1), OK));
  assertClean(t, rig);
});

test('18 frags: the overflow goes on a frag_list that is copied out at once (tx_frag_overflow)', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  const slots: SlotSpec[] = [{ size: 200 }];
  for (let i = 0; i < 18; i++) slots.push({ size: 1000 + i, offset: i });
  const p = g.send(slots);
  t.is(g.vif.txAction(), 1);
  const skb = rig.held[0]!;
  t.is(skb.shinfo.fragList, null);
  t.is(skbHeadlen(skb), 200);
  for (let i = 0; i < skb.shinfo.nrFrags; i++) t.is(skb.shinfo.frags[i]!.page.foreign, null, `frag ${i} is local`);
  t.deepEqual(Rig.bytesOf(skb), p.bytes);
  t.is(g.vif.stats.txFragOverflow, 1);
  t.is(g.vif.stats.txZerocopySent, 2);
  t.is(g.vif.stats.txZerocopySuccess, 2);
  t.deepEqual(sortedIds(g.txResponses()), expect([p.ids[0]!], OK), 'only the copied first slot so far');
  // The stack still holds the skb, but no guest page: every grant goes back on the next flush.
  t.is(g.vif.flushDealloc(), 18);
  t.deepEqual(sortedIds(g.txResponses()), expect(p.ids.slice(1), OK));
  t.is(rig.mapper.stats().liveHandles, 0);
  drain(rig);
  assertClean(t, rig);
});

function tcpFrame(payload: number, opts: { v6?: boolean; udp?: boolean; csum?: number } = {}): Uint8Array {
  const v6 = opts.v6 ?? false;
  const udp = opts.udp ?? false;
  const l3 = v6 ? 40 : 20;
  const l4 = udp ? 8 : 20;
  const buf = new Uint8Array(14 + l3 + l4 + payload);
  writeEthHeader(buf, 0, 0x020000000002, 0x020000000001, v6 ? ETH_P_IPV6 : ETH_P_IP);
  const proto = udp ? IPPROTO_UDP : IPPROTO_TCP;
  if (v6) {
    buf[14] = 0x60;
    buf[18] = ((l4 + payload) >>> 8) & 0xff;
    buf[19] = (l4 + payload) & 0xff;
    buf[20] = proto;
    buf[21] = 64;
    for (let i = 0; i < 32; i++) buf[22 + i] = i + 1;
  } else {
    writeIpv4Header(buf, 14, { totalLen: l3 + l4 + payload, id: 7, ttl: 64, proto, saddr: ipv4(10, 0, 0, 1), daddr: ipv4(10, 0, 0, 2) });
  }
  if (udp) writeUdpHeader(buf, 14 + l3, 1000, 2000, l4 + payload);
  else writeTcpHeader(buf, 14 + l3, { sport: 1000, dport: 2000, seq: 1, ack: 0, flags: 0x18, window: 100 });
  for (let i = 0; i < payload; i++) buf[14 + l3 + l4 + i] = (i * 7) & 0xff;
  if (opts.csum !== undefined) {
    const at = 14 + l3 + (udp ? 6 : 16);
    buf[at] = opts.csum >>> 8;
    buf[at + 1] = opts.csum & 0xff;
  }
  return buf;
}

function sendFrame(g: TestGuest, frame: Uint8Array, split: number[], flags: number, extras: ExtraInfoFields[] = []) {
  const slots: SlotSpec[] = split.map((size) => ({ size }));
  return g.send(slots, { flags, extras, bytes: frame });
}

test('NETTXF_csum_blank: CHECKSUM_PARTIAL with csum_start/offset of the TCP or UDP header', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  const cases = [
    { v6: false, udp: false, start: 14 + 20, off: 16 },
    { v6: false, udp: true, start: 14 + 20, off: 6 },
    { v6: true, udp: false, start: 14 + 40, off: 16 },
    { v6: true, udp: true, start: 14 + 40, off: 6 },
  ];
  for (const c of cases) {
    const f = tcpFrame(500, c);
    sendFrame(g, f, [f.length], NETTXF_csum_blank);
    t.is(g.vif.txAction(), 1);
    const skb = rig.held.pop()!;
    t.is(skb.ipSummed, CHECKSUM_PARTIAL);
    t.is(skb.csumStart - skb.data, c.start);
    t.is(skb.csumOffset, c.off);
    t.is(skb.transportHeader - skb.data, c.start);
    t.is(skb.protocol, c.v6 ? ETH_P_IPV6 : ETH_P_IP);
    t.deepEqual(Rig.bytesOf(skb), f, 'no byte changed: the guest wrote the pseudo-header sum itself');
    kfreeSkb(skb);
  }
  const f = tcpFrame(100);
  sendFrame(g, f, [f.length], NETTXF_data_validated);
  g.vif.txAction();
  t.is(rig.held[0]!.ipSummed, CHECKSUM_UNNECESSARY);
  sendFrame(g, f, [f.length], 0);
  g.vif.txAction();
  t.is(rig.held[1]!.ipSummed, CHECKSUM_NONE);
  drain(rig);
  assertClean(t, rig);
});

test('GSO: gso_size/type/segs from the extra; the extra slot gets RSP_NULL right after its packet', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  const f = tcpFrame(9000);
  const p = sendFrame(g, f, [1000, 4096, f.length - 5096], NETTXF_csum_blank, [gsoExtra(1448, XEN_NETIF_GSO_TYPE_TCPV4)]);
  t.is(g.vif.txAction(), 1);
  const skb = rig.held[0]!;
  t.is(skb.shinfo.gsoSize, 1448);
  t.is(skb.shinfo.gsoType, SKB_GSO_TCPV4);
  t.is(skb.shinfo.gsoSegs, Math.ceil(9000 / 1448));
  t.deepEqual(Rig.bytesOf(skb), f);
  drain(rig);
  const rs = g.txResponses();
  t.is(rs.length, 4);
  const firstAt = rs.findIndex((r) => r.id === p.ids[0]);
  t.true(firstAt >= 0);
  t.is(rs[firstAt]!.status, OK);
  t.is(rs[firstAt + 1]!.status, XEN_NETIF_RSP_NULL, 'the NULL follows the response that carries the extra');
  t.deepEqual(sortedIds(rs.filter((r) => r.status !== XEN_NETIF_RSP_NULL)), expect(p.dataIds, OK));
  assertClean(t, rig);
});

test('GSO without csum_blank: forced CHECKSUM_PARTIAL and the pseudo-header sum recomputed (rx_gso_checksum_fixup)', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  for (const v6 of [false, true]) {
    const f = tcpFrame(3000, { v6, csum: 0xdead });
    sendFrame(g, f, [f.length], 0, [gsoExtra(1000, v6 ? XEN_NETIF_GSO_TYPE_TCPV6 : XEN_NETIF_GSO_TYPE_TCPV4)]);
    t.is(g.vif.txAction(), 1);
    const skb = rig.held.pop()!;
    t.is(skb.ipSummed, CHECKSUM_PARTIAL);
    t.is(skb.shinfo.gsoType, v6 ? SKB_GSO_TCPV6 : SKB_GSO_TCPV4);
    const bytes = Rig.bytesOf(skb);
    const l3 = v6 ? 40 : 20;
    const l4len = 20 + 3000;
    let sum = IPPROTO_TCP + l4len;
    if (v6) for (let i = 0; i < 32; i += 2) sum += get16(f, 22 + i);
    else sum += get16(f, 26) + get16(f, 28) + get16(f, 30) + get16(f, 32);
    t.is(get16(bytes, 14 + l3 + 16), csumFold16(sum));
    kfreeSkb(skb);
  }
  t.is(g.vif.stats.rxGsoChecksumFixup, 2);
  drain(rig);
  assertClean(t, rig);
});

test('dealloc: a clone keeps the grants until it goes too; pskb_copy shares the frags under rusty', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  const p = g.send([{ size: 3000 }, { size: 2000 }]);
  g.vif.txAction();
  const skb = rig.held.pop()!;
  const clone = skbClone(skb);
  const copy = pskbCopy(skb);
  kfreeSkb(skb);
  rig.held.push(clone, copy);
  t.is(g.vif.flushDealloc(), 0);
  kfreeSkb(rig.held.shift()!);
  t.is(g.vif.flushDealloc(), 0, 'the pskb_copy still reads the pages');
  t.deepEqual(g.txResponses(), []);
  kfreeSkb(rig.held.shift()!);
  t.is(g.vif.flushDealloc(), 2);
  t.deepEqual(sortedIds(g.txResponses()), expect(p.ids, OK));
  assertClean(t, rig);
});

test('dealloc: an orphaned skb gives the grants back while the stack still holds it', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  const p = g.send([{ size: 3000 }]);
  g.vif.txAction();
  const skb = rig.held[0]!;
  t.is(skbOrphanFrags(skb), 0);
  t.is(g.vif.flushDealloc(), 1);
  t.deepEqual(g.txResponses(), [{ id: p.ids[0], status: OK }]);
  t.deepEqual(Rig.bytesOf(skb), p.bytes, 'the data was copied out first');
  drain(rig);
  assertClean(t, rig);
});

test('pending indices are recycled: 3 x 256 mapped packets go through one ring without running out', (t) => {
  const rig = new Rig({ frames: 1100 });
  const g = rig.guest(1);
  let sent = 0;
  for (let round = 0; round < 3 * MAX_PENDING_REQS / 32; round++) {
    const ids: number[] = [];
    for (let i = 0; i < 32; i++) ids.push(...g.send([{ size: 200 }]).ids);
    t.is(g.vif.txAction(64), 32);
    t.is(g.vif.tx!.nrPendingReqs, 32);
    drain(rig);
    t.is(g.vif.tx!.nrPendingReqs, 0);
    t.deepEqual(sortedIds(g.txResponses()), expect(ids, OK));
    sent += 32;
    // The guest reuses its grants: end access, so refs and frames can be handed out again.
    for (const m of g.notices.messages.splice(0)) for (const ref of m.grefs) g.table.endForeignAccess(ref);
  }
  t.is(sent, 768);
  assertClean(t, rig);
});

test('budget: one TX action builds at most `budget` packets; the rest waits', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  for (let i = 0; i < 10; i++) g.send([{ size: 60 }]);
  t.is(g.vif.txAction(4), 4);
  t.is(g.vif.txAction(4), 4);
  t.is(g.vif.txAction(4), 2);
  t.is(g.vif.txAction(4), 0);
  drain(rig);
  assertClean(t, rig);
});

test('responses notify only when the ring says so, and req_event is re-armed when the ring runs dry', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  g.send([{ size: 60 }]);
  g.vif.txAction();
  t.is(g.txPort.notifies, 1, 'rsp_event starts at 1: the first response notifies');
  g.send([{ size: 60 }]);
  g.vif.txAction();
  t.is(g.txPort.notifies, 1, 'the frontend has not re-armed rsp_event, so no notify');
  g.txResponses();
  t.false(g.tx.finalCheckForResponses(), 're-arms rsp_event = rsp_cons + 1');
  g.send([{ size: 60 }]);
  g.vif.txAction();
  t.is(g.txPort.notifies, 2);
  // req_event: the backend asked to be woken by the next request.
  t.true(g.tx.pushRequestsAndCheckNotify() === false, 'nothing new pushed');
  g.tx.putRequest(TxRequest, { gref: 0, offset: 0, flags: 0, id: 99, size: 14 });
  t.true(g.tx.pushRequestsAndCheckNotify(), 'a new request after a final check notifies the backend');
  rig.freeAll();
});


// ---------------------------------------------------------------------------------------------------------
// The validation table (kernel-xen.md §3): FATAL, ERROR or OKAY exactly as Linux

interface FatalRow {
  name: string;
  send: (g: TestGuest) => void;
  message: (g: TestGuest) => string;
}

const fatalRows: FatalRow[] = [
  {
    name: 'req_prod - req_cons > RING_SIZE',
    send: (g) => {
      Atomics.store(new Int32Array(g.mem.sab, 0, 4), 0, 300);
    },
    message: () => 'Impossible number of requests. req_prod 300, req_cons 0, size 256',
  },
  {
    name: 'req_prod going backwards',
    send: (g) => {
      g.send([{ size: 60 }]);
      g.vif.txAction();
      g.rig.freeAll();
      Atomics.store(new Int32Array(g.mem.sab, 0, 4), 0, 0);
    },
    message: () => 'Impossible number of requests. req_prod 0, req_cons 1, size 256',
  },
  {
    name: 'extra_info flag with no extra slot',
    send: (g) => g.putTx([{ kind: 'req', req: { gref: 9, offset: 0, flags: NETTXF_extra_info, id: 1, size: 60 } }]),
    message: () => 'Missing extra info',
  },
  {
    name: 'extra type 0',
    send: (g) =>
      g.putTx([
        { kind: 'req', req: { gref: 9, offset: 0, flags: NETTXF_extra_info, id: 1, size: 60 } },
        { kind: 'raw', bytes: new Uint8Array([0, 0, 1, 2, 3, 4, 5, 6]) },
      ]),
    message: () => 'Invalid extra type: 0',
  },
  {
    name: 'extra type >= XEN_NETIF_EXTRA_TYPE_MAX',
    send: (g) =>
      g.putTx([
        { kind: 'req', req: { gref: 9, offset: 0, flags: NETTXF_extra_info, id: 1, size: 60 } },
        { kind: 'raw', bytes: new Uint8Array([6, 0, 1, 2, 3, 4, 5, 6]) },
      ]),
    message: () => 'Invalid extra type: 6',
  },
  {
    name: 'extras running past the producer (FLAG_MORE on the last one)',
    send: (g) =>
      g.putTx([
        { kind: 'req', req: { gref: 9, offset: 0, flags: NETTXF_extra_info, id: 1, size: 60 } },
        { kind: 'raw', bytes: new Uint8Array([1, 1, 0xdc, 5, 1, 0, 0, 0]) },
      ]),
    message: () => 'Missing extra info',
  },
  {
    name: 'GSO size 0',
    send: (g) => g.send([{ size: 200 }], { extras: [gsoExtra(0, XEN_NETIF_GSO_TYPE_TCPV4)] }),
    message: () => 'GSO size must not be zero.',
  },
  {
    name: 'unknown GSO type',
    send: (g) => g.send([{ size: 200 }], { extras: [gsoExtra(1000, 3)] }),
    message: () => 'Bad GSO type 3.',
  },
  {
    name: '21 frags (>= fatal_skb_slots)',
    send: (g) => g.send([{ size: 100 }, ...Array.from({ length: 21 }, () => ({ size: 10 }))]),
    message: () => 'Malicious frontend using 20 slots, threshold 20',
  },
  {
    name: 'more_data running past the producer',
    send: (g) => g.send([{ size: 100, flags: NETTXF_more_data }, { size: 50, flags: NETTXF_more_data }, { size: 50, flags: NETTXF_more_data }], { totalSize: 200 }),
    message: () => 'Asked for 2 slots but exceeds this limit',
  },
  {
    name: 'frag offset+size > 4096',
    send: (g) => g.send([{ size: 100 }, { size: 200, offset: 4000 }]),
    message: () => 'Cross page boundary, txp->offset: 4000, size: 200',
  },
  {
    name: 'first slot offset+size > 4096',
    send: (g) => g.send([{ size: 200, offset: 4000 }]),
    message: () => 'txreq.offset: 4000, size: 200, end: 4200',
  },
];

for (const row of fatalRows) {
  test(`FATAL: ${row.name} disables the vif; the other vif is unaffected`, (t) => {
    const rig = new Rig();
    const bad = rig.guest(1);
    const good = rig.guest(2);
    row.send(bad);
    bad.vif.txAction();
    t.true(bad.vif.disabled);
    t.false(bad.vif.carrier);
    t.is(bad.vif.fatalError, row.message(bad));
    t.true(rig.logs.includes(`err: vif1.0: ${row.message(bad)}`));
    t.true(rig.logs.includes('err: vif1.0: fatal error; disabling device'));
    t.deepEqual(bad.txResponses().filter((r) => r.status !== OK), [], 'no response for the bad packet');
    // Nothing more is consumed or answered until reconnect.
    const consumed = bad.vif.tx!.ring.reqCons;
    bad.send([{ size: 60 }]);
    t.is(bad.vif.txAction(), 0);
    t.is(bad.vif.tx!.ring.reqCons, consumed);
    t.deepEqual(bad.txResponses().filter((r) => r.status !== OK), []);
    t.is(rig.held.length, 0);
    const p = good.send([{ size: 500 }]);
    t.is(good.vif.txAction(), 1);
    t.false(good.vif.disabled);
    drain(rig);
    t.deepEqual(good.txResponses(), [{ id: p.ids[0], status: OK }]);
    assertClean(t, rig);
  });
}

interface ErrorRow {
  name: string;
  send: (g: TestGuest) => { ids: number[] };
  /** The slots answered ERROR (indices into ids); the rest OKAY; -1 entries are extras (NULL). */
  error: number[];
  delivered: boolean;
  txError?: string;
}

const errorRows: ErrorRow[] = [
  {
    name: '19 frags (>= XEN_NETBK_LEGACY_SLOTS_MAX): dropped, every slot ERROR',
    send: (g) => g.send([{ size: 100 }, ...Array.from({ length: 19 }, () => ({ size: 10 }))]),
    error: Array.from({ length: 20 }, (_, i) => i),
    delivered: false,
    txError: 'Too many slots (18) exceeding limit (18), dropping packet',
  },
  {
    name: '20 frags: still ERROR, not FATAL',
    send: (g) => g.send([{ size: 100 }, ...Array.from({ length: 20 }, () => ({ size: 10 }))]),
    error: Array.from({ length: 21 }, (_, i) => i),
    delivered: false,
  },
  {
    name: 'frag larger than the remaining total',
    send: (g) => g.send([{ size: 100 }, { size: 200 }], { totalSize: 100 }),
    error: [0, 1],
    delivered: false,
    txError: 'Invalid tx request, slot size 200 > remaining size 100',
  },
  {
    name: 'first slot smaller than ETH_HLEN',
    send: (g) => g.send([{ size: 10 }, { size: 100 }]),
    error: [0, 1],
    delivered: false,
    txError: 'Bad packet size: 10',
  },
  {
    name: 'a single slot smaller than ETH_HLEN',
    send: (g) => g.send([{ size: 13 }]),
    error: [0],
    delivered: false,
  },
  {
    name: 'a frag whose grant cannot be mapped: that slot ERROR, the others OKAY',
    send: (g) => g.send([{ size: 200 }, { size: 300 }, { size: 300, gref: 999_999 }, { size: 300 }]),
    error: [2],
    delivered: false,
  },
  {
    name: 'a header whose grant cannot be copied: that slot ERROR, the mapped frags OKAY',
    send: (g) => g.send([{ size: 200, gref: 999_999 }, { size: 300 }]),
    error: [0],
    delivered: false,
  },
  {
    name: 'a slot both copied and mapped whose copy fails: one ERROR for it',
    send: (g) => g.send([{ size: 600, gref: 999_999 }, { size: 300 }]),
    error: [0],
    delivered: false,
  },
  {
    name: 'a frag granted to another domain, and a revoked one',
    send: (g) => {
      const other = g.table.grantForeignAccess(5, g.frame(), true);
      const revoked = g.table.grantForeignAccess(0, g.frame(), true);
      g.table.endForeignAccessRef(revoked);
      return g.send([{ size: 200 }, { size: 300, gref: other }, { size: 300, gref: revoked }]);
    },
    error: [1, 2],
    delivered: false,
  },
  {
    name: 'the first frag fails on a packet whose header copy succeeded: header OKAY',
    send: (g) => g.send([{ size: 600 }, { size: 300, gref: 999_998 }, { size: 300 }]),
    error: [1],
    delivered: false,
  },
];

for (const row of errorRows) {
  test(`ERROR: ${row.name}`, (t) => {
    const rig = new Rig();
    const g = rig.guest(1);
    const p = row.send(g);
    g.vif.txAction();
    t.false(g.vif.disabled);
    t.is(rig.held.length, row.delivered ? 1 : 0);
    drain(rig);
    const want = p.ids.map((id, i) => `${id}:${row.error.includes(i) ? ERR : OK}`).sort();
    t.deepEqual(sortedIds(g.txResponses()), want);
    if (row.txError !== undefined) t.is(g.vif.lastTxError, row.txError);
    // The vif goes on: a good packet afterwards is delivered.
    const q = g.send([{ size: 400 }]);
    t.is(g.vif.txAction(), 1);
    drain(rig);
    t.deepEqual(g.txResponses(), [{ id: q.ids[0], status: OK }]);
    assertClean(t, rig);
  });
}

test('ERROR: skb allocation failure answers every slot ERROR', (t) => {
  let fail = true;
  const rig = new Rig({ vif: { allocSkb: (ctx, size) => (fail ? null : allocSkbReal(ctx, size)) } });
  const g = rig.guest(1);
  const p = g.send([{ size: 300 }, { size: 300 }]);
  g.vif.txAction();
  t.is(g.vif.lastTxError, "Can't allocate a skb in start_xmit.");
  t.deepEqual(sortedIds(g.txResponses()), expect(p.ids, ERR));
  fail = false;
  g.send([{ size: 300 }]);
  t.is(g.vif.txAction(), 1);
  drain(rig);
  assertClean(t, rig);
});

test('a map failure unmaps and returns the good frags of the packet at once', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  const p = g.send([{ size: 200 }, { size: 300 }, { size: 300, gref: 999_999 }, { size: 300 }]);
  g.vif.txAction();
  t.is(rig.mapper.stats().liveHandles, 0);
  t.deepEqual(g.notices.grefs().sort((a, b) => a - b), [...p.grefs].sort((a, b) => a - b), 'every answered slot, the failed one too');
  t.true(g.vif.lastTxError!.startsWith('Grant map of 2. frag failed! status: -3 (GNTST_bad_gntref)'));
  t.is(g.vif.stats.txMapErrors, 1);
  assertClean(t, rig);
});

test('OKAY: zero-length frags are answered at once and never become frags (XSA-448)', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  const p = g.send([{ size: 300 }, { size: 0, gref: 999_999 }, { size: 500 }, { size: 0 }]);
  t.is(g.vif.txAction(), 1);
  const skb = rig.held[0]!;
  t.is(skb.shinfo.nrFrags, 2);
  for (let i = 0; i < skb.shinfo.nrFrags; i++) t.true(skb.shinfo.frags[i]!.size > 0);
  t.deepEqual(Rig.bytesOf(skb), p.bytes);
  t.deepEqual(sortedIds(g.txResponses()), expect([p.ids[1]!, p.ids[3]!], OK));
  t.is(g.vif.stats.txZeroLengthSlots, 2);
  drain(rig);
  t.deepEqual(sortedIds(g.txResponses()), expect([p.ids[0]!, p.ids[2]!], OK));
  assertClean(t, rig);
});

test('multicast: 64 adds OKAY, the 65th ERROR; DEL always OKAY', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  const mac = (i: number) => [0x01, 0x00, 0x5e, 0, 0, i];
  const ids: number[] = [];
  for (let i = 0; i < 65; i++) ids.push(...g.send([{ size: 0, gref: 0 }], { extras: [rawExtra(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, mac(i))] }).ids);
  g.vif.txAction();
  const rs = g.txResponses();
  t.is(rs.length, 130);
  const data = rs.filter((r) => r.status !== XEN_NETIF_RSP_NULL);
  t.deepEqual(
    data.map((r) => r.status),
    [...Array.from({ length: 64 }, () => OK), ERR],
  );
  t.is(g.vif.mcastCount, 64);
  t.is(g.vif.lastTxError, 'Too many multicast addresses');
  const del = g.send([{ size: 0, gref: 0 }], { extras: [rawExtra(XEN_NETIF_EXTRA_TYPE_MCAST_DEL, [0x01, 0, 0x5e, 9, 9, 9])] });
  const del2 = g.send([{ size: 0, gref: 0 }], { extras: [rawExtra(XEN_NETIF_EXTRA_TYPE_MCAST_DEL, mac(3))] });
  g.vif.txAction();
  t.deepEqual(
    g.txResponses().filter((r) => r.status !== XEN_NETIF_RSP_NULL),
    [{ id: del.ids[0], status: OK }, { id: del2.ids[0], status: OK }],
  );
  t.is(g.vif.mcastCount, 63);
  t.false(g.vif.disabled);
  assertClean(t, rig);
});

test('repeated extra type: the last one wins (a bad GSO extra overridden by a good one is not fatal)', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  const f = tcpFrame(2000);
  sendFrame(g, f, [f.length], NETTXF_csum_blank, [gsoExtra(0, 9), gsoExtra(500, XEN_NETIF_GSO_TYPE_TCPV4)]);
  t.is(g.vif.txAction(), 1);
  t.false(g.vif.disabled);
  t.is(rig.held[0]!.shinfo.gsoSize, 500);
  drain(rig);
  assertClean(t, rig);
});

test('checksum_setup failure drops the packet; its slots come back OKAY through the design', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  const f = tcpFrame(1000);
  f[12] = ETH_P_ARP >>> 8;
  f[13] = ETH_P_ARP & 0xff;
  const p = sendFrame(g, f, [600, f.length - 600], NETTXF_csum_blank);
  t.is(g.vif.txAction(), 0);
  t.is(rig.held.length, 0);
  t.is(g.vif.lastTxError, "Can't setup checksum in net_tx_action: protocol 0x0806 is not IPv4 or IPv6");
  t.is(g.vif.stats.txChecksumDrops, 1);
  g.vif.flushDealloc();
  t.deepEqual(sortedIds(g.txResponses()), expect(p.ids, OK));
  t.is(g.vif.stats.txZerocopySent, g.vif.stats.txZerocopySuccess + g.vif.stats.txZerocopyFail);
  const frag = tcpFrame(1000);
  frag[14 + 6] = 0x20; // IP_MF
  sendFrame(g, frag, [frag.length], NETTXF_csum_blank);
  t.is(g.vif.txAction(), 0);
  t.is(g.vif.lastTxError, "Can't setup checksum in net_tx_action: IPv4 packet is a fragment");
  drain(rig);
  assertClean(t, rig);
});

test('a released page that is not in flight is refused, not answered twice', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  g.send([{ size: 3000 }]);
  g.vif.txAction();
  const page = rig.held[0]!.shinfo.frags[0]!.page;
  drain(rig);
  const before = g.txResponses().length;
  g.vif.tx!.sink.release(page);
  t.is(g.vif.flushDealloc(), 0);
  t.is(g.txResponses().length, 0);
  t.is(before, 1);
  t.is(g.vif.stats.deallocRefused, 1);
  assertClean(t, rig);
});

test('naive design: an early return is seen by the oracle and the page is retired, not reused', (t) => {
  const rig = new Rig({ design: naive });
  const g = rig.guest(1);
  g.send([{ size: 3000 }]);
  g.vif.txAction();
  const skb = rig.held.pop()!;
  const copy = pskbCopy(skb); // naive: no parent reference, so freeing skb fires the destructor
  kfreeSkb(skb);
  rig.held.push(copy);
  g.vif.flushDealloc();
  t.is(rig.oracle.report.earlyReturns, 1);
  t.is(g.vif.stats.pagesRetired, 1);
  rig.freeAll();
});

// ---------------------------------------------------------------------------------------------------------
// Property: any well-formed packet arrives intact, every slot is answered exactly once, grants all come back

const slotArb = fc.record({ size: fc.integer({ min: 0, max: 4096 }), offsetFrac: fc.double({ min: 0, max: 1, noNaN: true }) });

testProp(
  'any valid packet: bytes intact, header rule, each slot answered once, oracle clean',
  [fc.integer({ min: 14, max: 4096 }), fc.array(slotArb, { maxLength: 18 }), fc.boolean(), fc.integer({ min: 0, max: 4095 })],
  (t, firstSize, frags, holdClone, firstOffRaw) => {
    const rig = new Rig({ frames: 120 });
    const g = rig.guest(1);
    const firstOff = Math.min(firstOffRaw, XEN_PAGE_SIZE - firstSize);
    let total = firstSize;
    const slots: SlotSpec[] = [{ size: firstSize, offset: firstOff }];
    for (const f of frags) {
      if (total + f.size > 0xffff) break;
      total += f.size;
      slots.push({ size: f.size, offset: Math.floor(f.offsetFrac * (XEN_PAGE_SIZE - f.size)) });
    }
    const p = g.send(slots);
    t.is(g.vif.txAction(), 1);
    const skb = rig.held[0]!;
    t.deepEqual(Rig.bytesOf(skb), p.bytes);
    let dataLen = Math.min(total, 128);
    if (slots.length - 1 >= 17 && dataLen < firstSize) dataLen = firstSize;
    t.is(skbHeadlen(skb), dataLen);
    t.true(skb.shinfo.nrFrags <= MAX_SKB_FRAGS);
    // Slots answered at once: those the header copy covered whole, and zero-length ones.
    let covered = 0;
    const early = new Set<number>();
    for (let i = 0; i < slots.length; i++) {
      const s = slots[i]!.size;
      if (covered + s <= dataLen || s === 0) early.add(i);
      covered += s;
    }
    const overflow = slots.length - 1 > MAX_SKB_FRAGS;
    const first = g.txResponses();
    if (!overflow) t.deepEqual(sortedIds(first), expect(p.ids.filter((_, i) => early.has(i)), OK));
    if (holdClone) {
      const c = skbClone(skb);
      kfreeSkb(rig.held.pop()!);
      rig.held.push(c);
      g.vif.flushDealloc();
      const mid = g.txResponses();
      if (!overflow) t.deepEqual(mid, [], 'a clone still holds every mapped page');
      first.push(...mid);
    }
    drain(rig);
    const all = [...first, ...g.txResponses()];
    t.deepEqual(sortedIds(all), expect(p.ids, OK));
    const byNum = (a: number, b: number) => a - b;
    t.deepEqual(g.notices.grefs().sort(byNum), [...p.grefs].sort(byNum), 'every slot\'s grant posted back exactly once');
    t.is(g.vif.tx!.nrPendingReqs, 0);
    const st = g.vif.stats;
    t.is(st.txZerocopySent, st.txZerocopySuccess + st.txZerocopyFail);
    assertClean(t, rig);
  },
  { numRuns: 150 },
);

test('XSA-155: requests rewritten after they were read change nothing (each is copied once, then validated)', (t) => {
  let g: TestGuest | null = null;
  let armed = false;
  const rig = new Rig({
    beforeCmpxchg: () => {
      if (!armed || g === null) return;
      armed = false;
      // While netback maps, the guest rewrites every TX slot: huge sizes, offsets past the page, new ids.
      const v = new DataView(g.mem.sab, 0, XEN_PAGE_SIZE);
      for (let i = 0; i < 256; i++) {
        const off = 64 + i * 12;
        v.setUint16(off + 4, 4000, true);
        v.setUint16(off + 8, 0xbeef, true);
        v.setUint16(off + 10, 4096, true);
      }
    },
  });
  g = rig.guest(1);
  const p = g.send([{ size: 1000 }, { size: 2000, offset: 5 }]);
  armed = true;
  t.is(g.vif.txAction(), 1);
  t.false(g.vif.disabled);
  const skb = rig.held[0]!;
  t.deepEqual(Rig.bytesOf(skb), p.bytes);
  t.deepEqual([skb.shinfo.frags[1]!.offset, skb.shinfo.frags[1]!.size], [5, 2000]);
  drain(rig);
  t.deepEqual(sortedIds(g.txResponses()), expect(p.ids, OK), 'ids echoed from the snapshot, not the rewritten slots');
  assertClean(t, rig);
});

test('a packet with an out-of-range gref in the header does not disturb the mapper', (t) => {
  const rig = new Rig();
  const g = rig.guest(1);
  g.send([{ size: 100, gref: 0xffffffff }]);
  g.vif.txAction();
  t.is(rig.mapper.stats().copies, 0);
  t.true(rig.mapper.stats().copyFailures >= 1);
  t.is(GNTST_okay, 0);
  assertClean(t, rig);
});

// ---------------------------------------------------------------------------------------------------------
// Copy mode (txGrantCopy): the comparison netback, nothing mapped, every slot answered at once

testProp(
  'copy mode: any valid packet arrives intact in local pages, every slot answered by the TX action itself',
  [fc.integer({ min: 14, max: 4096 }), fc.array(slotArb, { maxLength: 18 })],
  (t, firstSize, frags) => {
    const rig = new Rig({ frames: 120, vif: { txGrantCopy: true } });
    const g = rig.guest(1);
    let total = firstSize;
    const slots: SlotSpec[] = [{ size: firstSize, offset: XEN_PAGE_SIZE - firstSize }];
    for (const f of frags) {
      if (total + f.size > 0xffff) break;
      total += f.size;
      slots.push({ size: f.size, offset: Math.floor(f.offsetFrac * (XEN_PAGE_SIZE - f.size)) });
    }
    const p = g.send(slots);
    t.is(g.vif.txAction(), 1);
    t.is(rig.mapper.stats().liveHandles, 0, 'nothing stays mapped');
    t.is(rig.mapper.stats().maps, 0, 'nothing was ever mapped');
    t.deepEqual(sortedIds(g.txResponses()), expect(p.ids, OK));
    const skb = rig.held[0]!;
    t.deepEqual(Rig.bytesOf(skb), p.bytes);
    t.true(skb.shinfo.nrFrags <= 16);
    for (let i = 0; i < skb.shinfo.nrFrags; i++) t.is(skb.shinfo.frags[i]!.page.foreign, null);
    t.is(g.vif.stats.txZerocopySent, 0);
    const byNum = (a: number, b: number) => a - b;
    t.deepEqual(g.notices.grefs().sort(byNum), [...p.grefs].sort(byNum));
    drain(rig);
    t.deepEqual(g.txResponses(), []);
    assertClean(t, rig);
  },
  { numRuns: 60 },
);

test('copy mode: a slot whose copy fails is ERROR, the others OKAY, and the local pages go back to the pool', (t) => {
  const rig = new Rig({ vif: { txGrantCopy: true } });
  const g = rig.guest(1);
  const p = g.send([{ size: 300 }, { size: 4000 }, { size: 100, gref: 999_999 }, { size: 100 }]);
  t.is(g.vif.txAction(), 0);
  t.deepEqual(sortedIds(g.txResponses()), p.ids.map((id, i) => `${id}:${i === 2 ? ERR : OK}`).sort());
  t.is(rig.ctx.stats.pageAllocs, rig.ctx.stats.pageFrees, 'every local page was freed');
  t.is(rig.held.length, 0);
});

// ---------------------------------------------------------------------------------------------------------
// A hostile guest: random slot contents never make netback throw, leak, or answer a slot twice

// Mostly plausible slots with some garbage, so runs reach deep states instead of all ending in a FATAL.
const rawSlotArb = fc.record({
  kind: fc.oneof({ arbitrary: fc.constant('good'), weight: 6 }, { arbitrary: fc.constant('bad'), weight: 1 }, { arbitrary: fc.constant('extra'), weight: 1 }),
  offset: fc.oneof({ arbitrary: fc.constant(0), weight: 3 }, { arbitrary: fc.integer({ min: 0, max: 200 }), weight: 3 }, { arbitrary: fc.integer({ min: 0, max: 4096 }), weight: 1 }),
  size: fc.oneof({ arbitrary: fc.integer({ min: 0, max: 300 }), weight: 4 }, { arbitrary: fc.integer({ min: 0, max: 4096 }), weight: 1 }, { arbitrary: fc.integer({ min: 0, max: 0xffff }), weight: 1 }),
  flags: fc.oneof({ arbitrary: fc.constantFrom(0, 4, 5, 6), weight: 6 }, { arbitrary: fc.integer({ min: 0, max: 15 }), weight: 1 }),
  id: fc.integer({ min: 0, max: 0xffff }),
  etype: fc.oneof({ arbitrary: fc.integer({ min: 1, max: 5 }), weight: 5 }, { arbitrary: fc.integer({ min: 0, max: 7 }), weight: 1 }),
  eflags: fc.integer({ min: 0, max: 1 }),
  esize: fc.integer({ min: 0, max: 3000 }),
});

testProp(
  'random TX slots: no throw, every consumed slot answered at most once (exactly once unless FATAL), nothing leaked',
  [fc.array(rawSlotArb, { minLength: 1, maxLength: 60 }), fc.boolean()],
  (t, raw, copyMode) => {
    const rig = new Rig({ frames: 100, vif: { txGrantCopy: copyMode } });
    const g = rig.guest(1);
    const entries = raw.map((r) => {
      if (r.kind === 'extra') {
        const b = new Uint8Array([r.etype, r.eflags, r.esize & 0xff, r.esize >>> 8, 1, 0, 0, 0]);
        return { kind: 'raw' as const, bytes: b };
      }
      const gref = r.kind === 'good' ? g.grant()[0] : 3_000_000 + r.id;
      return { kind: 'req' as const, req: { gref, offset: r.offset, flags: r.flags, id: r.id, size: r.size } };
    });
    g.putTx(entries);
    for (let i = 0; i < 80 && !g.vif.disabled; i++) {
      if (g.vif.txAction() === 0 && !g.vif.tx!.hasWork()) break;
      rig.freeAll();
      g.vif.flushDealloc();
    }
    drain(rig);
    const ring = g.vif.tx!.ring;
    const consumed = ring.reqCons;
    const answered = ring.rspProdPvt;
    t.true(((consumed - answered) >>> 0) <= 256);
    if (!g.vif.disabled) t.is(answered, consumed, 'every consumed slot answered');
    t.is(g.vif.tx!.nrPendingReqs, 0);
    const st = g.vif.stats;
    t.is(st.txZerocopySent, st.txZerocopySuccess + st.txZerocopyFail);
    assertClean(t, rig);
  },
  { numRuns: 200 },
);
