// Netfront against the real netback (backend/xenvif.ts, netback.ts, netback-rx.ts) on one thread: the same rings,
// grants and event channel, grant-return notices parsed as the guest loop parses them. The "stack" is a list of
// held skbs the test frees when it wants.
import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { GNTMAP_host_map, GNTST_okay } from '../../shared/gnttab.js';
import { GrantMapper } from '../../shared/gnttab-mapper.js';
import { parseGrantReturnMessage, type GrantReturnMessage } from '../../shared/grant-return.js';
import { ipv4 } from '../../shared/inet.js';
import { XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_RX_SLOT_SIZE, XEN_NETIF_TX_SLOT_SIZE } from '../../shared/netif.js';
import { attachBackRing, type BackRing } from '../../shared/ring.js';
import { rusty } from '../../backend/release.js';
import { SkbContext, kfreeSkb, skbCopyBits, type SkBuff } from '../../backend/skbuff.js';
import { Xenvif } from '../../backend/xenvif.js';
import { TrafficMix, TxFrame, type Flow } from '../../frontend/traffic.js';
import type { TxPacket, TxSource } from '../../frontend/netfront.js';
import { Random } from '../../shared/random.js';
import { linearSkb } from '../backend/tcp-rig.js';
import { ALL_FEATURES, BE, FE, FE_MAC, makeGuest, type GuestRig } from './scripted-backend.js';

const FLOW: Flow = { srcMac: FE_MAC, dstMac: 0x02_00_00_00_00_22, saddr: ipv4(10, 0, 0, 11), daddr: ipv4(10, 0, 0, 12), sport: 40000, dport: 9 };
const BACK: Flow = { srcMac: 0x02_00_00_00_00_22, dstMac: FE_MAC, saddr: ipv4(10, 0, 0, 12), daddr: ipv4(10, 0, 0, 11), sport: 9, dport: 40000 };

interface Pair {
  g: GuestRig;
  vif: Xenvif;
  held: SkBuff[];
  notices: number;
  badNotices: string[];
}

function pair(): Pair {
  const g = makeGuest();
  const rings = g.nf.setupRings();
  if (!rings.ok) throw new Error(rings.error);
  const mapper = new GrantMapper({ domid: BE });
  mapper.addDomain(FE, g.gnttab.entries.sab, g.mem.sab);
  const ring = (ref: number, slot: number): BackRing => {
    const m = mapper.map({ dom: FE, ref, flags: GNTMAP_host_map });
    if (m.status !== GNTST_okay || m.bytes === null) throw new Error(`map ${ref}: ${m.status}`);
    const r = attachBackRing(m.bytes.buffer as SharedArrayBuffer, m.bytes.byteOffset, slot);
    if (!r.ok) throw new Error(r.error);
    return r.value;
  };
  const port = g.be.bindInterdomain(FE, rings.value.eventChannel);
  if (!port.ok) throw new Error(port.error);
  const p: Pair = { g, vif: null as unknown as Xenvif, held: [], notices: 0, badNotices: [] };
  const vif = new Xenvif({ domid: FE, handle: 0, ctx: new SkbContext({ design: rusty }), mapper, clock: g.clock, mtu: 9000 });
  vif.setInput((skb) => p.held.push(skb));
  vif.connect({
    txRing: ring(rings.value.txRingRef, XEN_NETIF_TX_SLOT_SIZE),
    rxRing: ring(rings.value.rxRingRef, XEN_NETIF_RX_SLOT_SIZE),
    txPort: g.be.port(port.value),
    rxPort: g.be.port(port.value),
    features: { canSg: true, gsoMask: 1 << XEN_NETIF_GSO_TYPE_TCPV4, rxNotify: true },
    // As the guest loop does: parse the notice as peer data, then hand its grefs to netfront.
    grantReturnPort: {
      postMessage: (msg: GrantReturnMessage) => {
        const m = parseGrantReturnMessage(msg);
        if (!m.ok) {
          p.badNotices.push(m.error);
          return;
        }
        p.notices++;
        g.nf.handleGrantReturns(m.value.grefs);
      },
    },
  });
  p.vif = vif;
  g.nf.connect(ALL_FEATURES);
  return p;
}

function bytesOf(skb: SkBuff): Uint8Array {
  const b = new Uint8Array(skb.len);
  if (skbCopyBits(skb, 0, b, 0, skb.len) !== 0) throw new Error('skb_copy_bits failed');
  return b;
}

/** Frames that netback maps (part or all of them beyond its 128-byte header copy). */
function mappedFrames(): TxFrame[] {
  return [
    new TxFrame().setUdp(FLOW, 1, 0, 1472, false), // 1514 B, one page
    Object.assign(new TxFrame().setUdp(FLOW, 2, 0, 1472, true), { pageOffset: 3000 }), // two slots
    new TxFrame().setUdp(FLOW, 3, 0, 8958, false), // a jumbo frame, three slots
    new TxFrame().setTcp(FLOW, 1, 0, 0x10, 65535, 4, 0, 64000, 1460), // GSO, 16 slots + extra
  ];
}

test('frames through the real netback: the stack gets them intact, grants come back only once the stack frees them', (t) => {
  const p = pair();
  const { g, vif } = p;
  const frames = mappedFrames();
  for (const f of frames) t.is(g.nf.xmit(f), 'sent');
  t.is(vif.txAction(64), frames.length);
  t.is(vif.fatalError, null);
  t.deepEqual(
    p.held.map((s) => bytesOf(s)),
    frames.map((f) => f.toBytes()),
  );
  t.is(vif.flushDealloc(), 0, 'nothing is released while the stack holds the skbs');
  t.is(g.nf.grantsOutstanding, g.nf.stats.grantsGranted);
  for (const skb of p.held.splice(0)) kfreeSkb(skb);
  vif.flushDealloc();
  t.deepEqual(p.badNotices, []);
  t.true(p.notices > 0);
  g.be.notify(0); // nothing: the vif notified through its port already
  g.fe.dispatch();
  g.nf.pollTx();
  t.is(g.nf.grantsOutstanding, 0);
  t.is(g.nf.stats.grantsReturned, g.nf.stats.grantsGranted);
  t.is(g.nf.stats.endAccessFailures, 0);
  t.is(g.nf.stats.txRspOkay, g.nf.stats.txSlots - g.nf.stats.txGso, 'every data slot answered OKAY');
  t.is(g.nf.stats.txRspNull, 1, 'the GSO extra answered NULL');
  t.false(g.nf.broken, g.nf.brokenReason ?? '');
});

// Netfront keeps every grant until it comes back on the port, so netback must return the grants of slots it
// answers without a mapping too: a frame it grant-copies whole (at most XEN_NETBACK_TX_COPY_LEN = 128 bytes).
test('a frame netback copies whole (64 B) gets its grant back on the port too', (t) => {
  const p = pair();
  const { g, vif } = p;
  t.is(g.nf.xmit(new TxFrame().setUdp(FLOW, 5, 0, 22, false)), 'sent');
  vif.txAction(64);
  for (const skb of p.held.splice(0)) kfreeSkb(skb);
  vif.flushDealloc();
  g.nf.pollTx();
  t.is(g.nf.stats.txRspOkay, 1);
  t.is(g.nf.grantsAnsweredNotReturned, 0);
  t.is(g.nf.grantsOutstanding, 0);
});

testProp(
  'frames netback delivers to the guest arrive intact and verified, whatever their size',
  [fc.array(fc.integer({ min: 9, max: 8958 }), { minLength: 1, maxLength: 40 })],
  (t, sizes) => {
    const p = pair();
    const { g, vif } = p;
    const sent: Uint8Array[] = [];
    let pos = 0;
    for (const n of sizes) {
      const b = new TxFrame().setUdp(BACK, 6, pos, n, false).toBytes();
      pos += n - 8;
      sent.push(b);
      vif.startXmit(linearSkb(vif.ctx, b));
    }
    for (let i = 0; i < 100 && g.received.length < sent.length; i++) {
      vif.rxAction(64);
      g.fe.dispatch();
      g.nf.pollRx(64);
    }
    t.deepEqual(g.received, sent);
    t.is(g.nf.stats.rxVerified, sent.length);
    t.is(g.nf.stats.rxErrors, 0, g.nf.rxLastError ?? '');
    t.is(g.nf.stats.rxCorruptPayloads + g.nf.stats.rxBadFrames + g.nf.stats.rxChecksumErrors, 0);
    t.false(g.nf.broken);
  },
  { numRuns: 25 },
);

testProp(
  'a seeded traffic mix through the real netback, the stack freeing in random order: bytes intact, every grant back, none early',
  [fc.integer(), fc.constantFrom(1500, 9000)],
  (t, seed, mtu) => {
    const p = pair();
    const { g, vif } = p;
    const random = new Random(seed);
    const mix = new TrafficMix({
      clock: g.clock,
      random: random.fork(),
      self: { mac: FE_MAC, ip: FLOW.saddr },
      guests: [{ mac: FLOW.dstMac, ip: FLOW.daddr }],
      uplink: { mac: 0x02_00_00_00_00_fe, ip: ipv4(192, 0, 2, 1) },
      mtu,
    });
    const sent: Uint8Array[] = [];
    const recording: TxSource = {
      maxFrameLen: mix.maxFrameLen,
      next: (now: number): TxPacket | null => {
        const f = mix.next(now);
        if (f !== null) {
          const b = new Uint8Array(f.len);
          f.writeTo(b, 0);
          sent.push(b);
        }
        return f;
      },
    };
    const got: Uint8Array[] = [];
    for (let round = 0; round < 30; round++) {
      g.nf.transmit(random.int(1, 24), recording);
      const before = p.held.length;
      vif.txAction(64);
      for (const skb of p.held.slice(before)) got.push(bytesOf(skb));
      // The stack frees some of what it holds, in random order.
      for (let i = p.held.length - 1; i >= 0; i--) if (random.chance(0.5)) kfreeSkb(p.held.splice(i, 1)[0]!);
      vif.flushDealloc();
      g.fe.dispatch();
      g.nf.pollTx();
      t.false(g.nf.broken, g.nf.brokenReason ?? '');
      t.is(g.nf.stats.endAccessFailures, 0);
    }
    for (const skb of p.held.splice(0)) kfreeSkb(skb);
    vif.txAction(256);
    for (const skb of p.held.splice(0)) {
      got.push(bytesOf(skb));
      kfreeSkb(skb);
    }
    vif.flushDealloc();
    g.nf.pollTx();
    t.deepEqual(got, sent.slice(0, got.length));
    t.is(got.length, sent.length);
    t.is(g.nf.grantsOutstanding, 0);
    t.is(g.nf.stats.grantsReturned, g.nf.stats.grantsGranted);
    t.is(g.nf.stats.badGrantReturns, 0);
    t.deepEqual(p.badNotices, []);
    t.is(vif.fatalError, null);
  },
  { numRuns: 15 },
);
