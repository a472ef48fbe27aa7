// Whole-system runs in one thread with virtual time (tools/bench/rig.ts): real netfront and netback, the real
// stack and oracle, connected as the handshake connects them, stepped alternately until quiescent.
import test from 'ava';
import { RIG_REMOTE, rigConfig } from '../../frontend/adversary-rig.js';
import type { BackendConfig } from '../../backend/loop.js';
import { kfreeSkb, type SkBuff } from '../../backend/skbuff.js';
import type { GuestSource } from '../../frontend/loop.js';
import type { TxPacket } from '../../frontend/netfront.js';
import { TxFrame, type Flow } from '../../frontend/traffic.js';
import { VirtualClock } from '../../shared/clock.js';
import { ETH_HLEN } from '../../shared/ether.js';
import { IPPROTO_UDP, UDP_HLEN, get16, ipv4, parseIpv4Header } from '../../shared/inet.js';
import { TxRequest, TxResponse, XEN_NETIF_RSP_ERROR } from '../../shared/netif.js';
import { OneThreadRig, type RigGuest } from '../../tools/bench/rig.js';

const REMOTE = RIG_REMOTE;

// The adversary rig's backend configuration (Linux's timeouts, rusty, zero-copy), with this file's seed.
function config(over: Partial<BackendConfig> = {}): BackendConfig {
  return rigConfig({ seed: 11, ...over });
}

const mac = (d: number): number => 0x00_16_3e_00_00_00 + d;
const ip = (d: number): number => ipv4(10, 0, 0, d);
const ECHO_PORT = 7;

/** Pings the peer guest `count` times (one echo request outstanding at a time) and answers its pings. */
class PingSource implements GuestSource {
  readonly maxFrameLen = 128;
  readonly rtts: number[] = [];
  readonly repliesSeen: number[] = [];
  private readonly frame = new TxFrame();
  private readonly request: Flow;
  private readonly reply: Flow;
  private readonly toAnswer: number[] = [];
  private next1 = 0;
  private sentAt = -1;

  constructor(
    readonly self: number,
    peer: number,
    readonly count: number,
    private readonly clock: VirtualClock,
  ) {
    this.request = { srcMac: mac(self), dstMac: mac(peer), saddr: ip(self), daddr: ip(peer), sport: 40000, dport: ECHO_PORT };
    this.reply = { srcMac: mac(self), dstMac: mac(peer), saddr: ip(self), daddr: ip(peer), sport: ECHO_PORT, dport: 40000 };
  }

  get done(): boolean {
    return this.next1 === this.count && this.toAnswer.length === 0;
  }

  next(now: number): TxPacket | null {
    const seq = this.toAnswer.shift();
    if (seq !== undefined) return this.frame.setUdp(this.reply, this.self, seq, 56, false);
    if (this.sentAt >= 0 || this.next1 === this.count) return null;
    this.sentAt = now;
    return this.frame.setUdp(this.request, this.self, this.next1, 56, false);
  }

  receive(buf: Uint8Array, off: number, len: number): boolean {
    const h = parseIpv4Header(buf, off + ETH_HLEN, len - ETH_HLEN);
    if (!h.ok || h.value.proto !== IPPROTO_UDP) return false;
    const udp = off + ETH_HLEN + h.value.ihl;
    const pos = new DataView(buf.buffer, buf.byteOffset + udp + UDP_HLEN + 4, 4).getUint32(0, true);
    if (get16(buf, udp + 2) === ECHO_PORT) {
      this.toAnswer.push(pos);
    } else if (get16(buf, udp) === ECHO_PORT && pos === this.next1 && this.sentAt >= 0) {
      this.repliesSeen.push(pos);
      this.rtts.push(this.clock.now() - this.sentAt);
      this.next1++;
      this.sentAt = -1;
    }
    return true;
  }
}

/** Sends exactly `count` UDP frames of `len` payload bytes to the remote host. */
class CountSource implements GuestSource {
  readonly maxFrameLen = 1514;
  sent = 0;
  private readonly frame = new TxFrame();
  private readonly flow: Flow;

  constructor(
    readonly self: number,
    readonly count: number,
    readonly len: number,
  ) {
    this.flow = { srcMac: mac(self), dstMac: REMOTE.mac, saddr: ip(self), daddr: REMOTE.ip, sport: 40000, dport: 9 };
  }

  next(): TxPacket | null {
    if (this.sent === this.count) return null;
    return this.frame.setUdp(this.flow, 7, this.len * this.sent++, this.len, false);
  }
}

/** Steps every guest and the backend, advancing virtual time, until `done()` and (unless told otherwise) quiescent. */
function runUntil(rig: OneThreadRig, clock: VirtualClock, done: () => boolean, maxSteps = 20_000, quiet = true): number {
  for (let i = 0; i < maxSteps; i++) {
    for (const g of rig.guests) rig.guestStep(g, true);
    rig.backendStep();
    clock.advance(0.01);
    if (done() && (!quiet || rig.quiescent())) return i;
  }
  throw new Error(`not done after ${maxSteps} steps`);
}

function noViolations(t: { deepEqual: (a: unknown, b: unknown, m?: string) => void }, rig: OneThreadRig): void {
  const o = rig.dom0.report().oracle;
  t.deepEqual({ early: o.earlyReturns, double: o.doubleReturns, leaks: o.leaks }, { early: 0, double: 0, leaks: 0 }, o.violations.join('; '));
}

test('two guests ping each other through the bridge: every echo answered, in order, frames forwarded by learned MACs', (t) => {
  const clock = new VirtualClock();
  const pings = new Map<number, PingSource>();
  const rig = new OneThreadRig({
    clock,
    config: config(),
    guests: 2,
    frames: 300,
    source: (d) => {
      const p = new PingSource(d, 3 - d, 20, clock);
      pings.set(d, p);
      return p;
    },
  });
  runUntil(rig, clock, () => [...pings.values()].every((p) => p.done));
  for (const [d, p] of pings) {
    t.deepEqual(p.repliesSeen, [...Array(20).keys()], `d${d} saw every reply in order`);
    t.true(p.rtts.every((r) => r > 0 && r < 5), `d${d} rtts ${p.rtts.join(',')}`);
  }
  const [g1, g2] = rig.guests as [RigGuest, RigGuest];
  const bridge = rig.dom0.stack.bridge;
  t.is(bridge.fdbLookup(mac(1)), g1.vif);
  t.is(bridge.fdbLookup(mac(2)), g2.vif);
  // 80 frames in all (20 requests and 20 replies each way); only the first, to a MAC not yet learned, is flooded.
  t.is(bridge.stats.forwarded + bridge.stats.flooded, 80);
  t.is(bridge.stats.flooded, 1);
  for (const g of rig.guests) {
    t.is(g.nf.stats.rxVerified, 40, `d${g.domid} verified every frame it received`);
    t.is(g.nf.stats.rxCorruptPayloads, 0);
    t.is(g.nf.grantsOutstanding, 0);
    t.is(g.nf.stats.grantsReturned, g.nf.stats.grantsGranted);
  }
  noViolations(t, rig);
});

test('a TX validation error on one vif is answered ERROR (and a fatal one disables only that vif); the other guests are unharmed', (t) => {
  const clock = new VirtualClock();
  const pings: PingSource[] = [];
  const rig = new OneThreadRig({
    clock,
    config: config(),
    guests: 2,
    rawGuests: 1,
    frames: 300,
    source: (d) => {
      const p = new PingSource(d, 3 - d, 10, clock);
      pings.push(p);
      return p;
    },
  });
  const bad = rig.raw[0]!;
  const page = bad.gnttab.grantForeignAccess(0, 5, true);
  // A first slot shorter than an Ethernet header: ERROR (xenvif_tx_build_gops "packet too short").
  bad.tx.putRequest(TxRequest, { gref: page, offset: 0, flags: 0, id: 9, size: ETH_HLEN - 4 });
  if (bad.tx.pushRequestsAndCheckNotify()) bad.port.notify();
  runUntil(rig, clock, () => bad.tx.unconsumedResponses() > 0, 200, false);
  const rsp = bad.tx.copyResponse(bad.tx.rspCons, TxResponse, TxResponse.create());
  t.deepEqual({ id: rsp.id, status: rsp.status }, { id: 9, status: XEN_NETIF_RSP_ERROR });
  bad.tx.consumeResponses(1);
  t.false(bad.vif.disabled);
  t.true(bad.returns.some((m) => m.grefs.includes(page)), 'the answered slot\'s grant is handed back');
  // offset + size beyond the page: FATAL, the vif is disabled.
  bad.tx.putRequest(TxRequest, { gref: page, offset: 4000, flags: 0, id: 10, size: 200 });
  if (bad.tx.pushRequestsAndCheckNotify()) bad.port.notify();
  runUntil(rig, clock, () => pings.every((p) => p.done));
  t.true(bad.vif.disabled);
  t.is(bad.vif.fatalError, 'txreq.offset: 4000, size: 200, end: 4200');
  for (const p of pings) t.is(p.repliesSeen.length, 10, `d${p.self} got every reply`);
  for (const g of rig.guests) {
    t.false(g.vif.disabled);
    t.is(g.nf.grantsOutstanding, 0);
    t.is(g.nf.stats.txErrors, 0);
  }
  noViolations(t, rig);
});

test('grants come back on the port only after the oracle agrees their pages are unreachable', (t) => {
  const clock = new VirtualClock();
  const src = new CountSource(1, 40, 1000);
  const rig = new OneThreadRig({ clock, config: config(), guests: 1, frames: 300, source: () => src });
  const g = rig.guests[0]!;
  const dom0 = rig.dom0;
  // Teach the bridge where the remote host is, then stall the uplink: the NIC holds every frame.
  rig.backendStep();
  const stallEnd = clock.now() + 200;
  dom0.stack.nic.stall(stallEnd);
  for (let i = 0; i < 200 && src.sent < src.count; i++) {
    rig.guestStep(g, true);
    rig.backendStep();
    clock.advance(0.01);
  }
  for (let i = 0; i < 50; i++) {
    rig.guestStep(g, false);
    rig.backendStep();
    clock.advance(1);
  }
  t.is(src.sent, 40);
  t.is(g.returns.length, 0, 'nothing is handed back while the NIC holds the frames');
  t.is(g.nf.stats.grantsReturned, 0);
  // Every page the NIC's frames use is reachable and mapped, for the oracle too.
  const held: SkBuff[] = [];
  dom0.stack.nic.forEachSkb((s) => void held.push(s));
  t.is(held.length, 40);
  for (const skb of held) {
    for (let i = 0; i < skb.shinfo.nrFrags; i++) {
      const page = skb.shinfo.frags[i]!.page;
      t.true(dom0.oracle.isMapped(page) && dom0.oracle.isReachable(page));
    }
  }
  // Watch every notice: at that moment no live skb may reach a page still bound to one of its grants.
  const live = (): Set<number> => {
    const refs = new Set<number>();
    dom0.stack.forEachSkb((s) => {
      for (let i = 0; i < s.shinfo.nrFrags; i++) {
        const f = s.shinfo.frags[i]!.page.foreign;
        if (f !== null && f.domid === 1) refs.add(f.gref);
      }
    });
    return refs;
  };
  let checked = 0;
  const orig = g.returns.push.bind(g.returns);
  g.returns.push = (...ms) => {
    const refs = live();
    for (const m of ms) for (const r of m.grefs) t.false(refs.has(r), `gref ${r} returned while reachable`);
    checked += ms.length;
    return orig(...ms);
  };
  clock.advance(stallEnd - clock.now());
  runUntil(rig, clock, () => true);
  t.true(checked > 0);
  t.is(g.nf.stats.grantsReturned, g.nf.stats.grantsGranted);
  const r = dom0.report();
  t.is(r.uplink.udpVerified, 40, 'the uplink read every payload intact: nothing was poisoned under it');
  t.is(r.uplink.udpCorrupt, 0);
  t.is(r.oracle.returned, r.oracle.mapped);
  noViolations(t, rig);
});

test('the rig frees what the test took: a frame a test holder keeps pins its grants until freed', (t) => {
  const clock = new VirtualClock();
  const src = new CountSource(1, 1, 3000);
  const rig = new OneThreadRig({ clock, config: config({ uplinkVerify: false }), guests: 1, frames: 300, source: () => src });
  const g = rig.guests[0]!;
  const kept: SkBuff[] = [];
  rig.dom0.stack.addHolder({ forEachSkb: (fn) => kept.forEach(fn) });
  // Take the frame off the bridge before it reaches the NIC.
  g.vif.setInput((skb) => void kept.push(skb));
  for (let i = 0; i < 100; i++) {
    rig.guestStep(g, true);
    rig.backendStep();
    clock.advance(0.1);
  }
  t.is(kept.length, 1);
  t.is(g.returns.length + g.nf.stats.grantsReturned, 0);
  t.true(g.nf.grantsOutstanding > 0);
  kfreeSkb(kept.pop()!);
  runUntil(rig, clock, () => true);
  t.is(g.nf.grantsOutstanding, 0);
  noViolations(t, rig);
});

test('grant-copy mode (the bench\'s comparison): the payload is copied, so a frame the NIC holds pins no guest grant', (t) => {
  const clock = new VirtualClock();
  const src = new CountSource(1, 10, 1400);
  const rig = new OneThreadRig({ clock, config: config({ grantCopy: true }), guests: 1, frames: 300, source: () => src });
  const g = rig.guests[0]!;
  const dom0 = rig.dom0;
  rig.backendStep();
  const stallEnd = clock.now() + 100;
  dom0.stack.nic.stall(stallEnd);
  for (let i = 0; i < 100; i++) {
    rig.guestStep(g, true);
    rig.backendStep();
    clock.advance(0.1);
  }
  rig.guestStep(g, false);
  let held = 0;
  dom0.stack.nic.forEachSkb((skb) => {
    held++;
    for (let i = 0; i < skb.shinfo.nrFrags; i++) t.is(skb.shinfo.frags[i]!.page.foreign, null, 'a local copy, not a guest page');
  });
  t.is(held, 10);
  t.is(g.nf.grantsOutstanding, 0, 'every grant came back while the NIC still holds the frames');
  t.is(dom0.oracle.report.mapped, 0, 'nothing was mapped');
  clock.advance(stallEnd - clock.now());
  runUntil(rig, clock, () => true);
  t.is(dom0.report().uplink.udpVerified, 10);
  noViolations(t, rig);
});
