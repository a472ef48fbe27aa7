import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { VirtualClock } from '../../shared/clock.js';
import { ETH_HLEN } from '../../shared/ether.js';
import { IPPROTO_TCP, csumFold, csumPartial, get16, get32, l4ChecksumOk, parseIpv4Header } from '../../shared/inet.js';
import { Random } from '../../shared/random.js';
import { parseTcpGsoHeaders, tcpGsoCheck } from '../../backend/gso.js';
import { Nic, type NicOptions } from '../../backend/nic.js';
import { PAGE_SIZE } from '../../backend/page.js';
import { naive, rusty } from '../../backend/release.js';
import {
  CHECKSUM_PARTIAL,
  SKB_GSO_DODGY,
  SKB_GSO_TCPV4,
  SKB_GSO_TCPV6,
  type SkBuff,
  type SkbContext,
  allocSkb,
  kfreeSkb,
  skbCopyBits,
} from '../../backend/skbuff.js';
import { FakeGuest, IP_A, IP_B, assertBalanced, collect, guestSkb, newCtx, reachableForeignPages, tcp4Frame, tcp6Frame, udpFrame } from './fixtures/stack-frames.js';

interface Rig {
  ctx: SkbContext;
  clock: VirtualClock;
  guest: FakeGuest;
  nic: Nic;
  wire: Uint8Array[];
  /** Checks queued grant returns against what the NIC (and `extra`) still hold. */
  flush(extra?: SkBuff[]): number;
}

function rig(opts: Partial<NicOptions> & Pick<NicOptions, 'features'>, design = rusty): Rig {
  const ctx = newCtx(design);
  const clock = new VirtualClock();
  const guest = new FakeGuest(ctx);
  const wire: Uint8Array[] = [];
  const nic = new Nic({
    clock,
    ...opts,
    wire: (skb) => {
      const b = new Uint8Array(skb.len);
      if (skbCopyBits(skb, 0, b, 0, skb.len) !== 0) throw new Error('wire: skb_copy_bits failed');
      wire.push(b);
    },
  });
  return { ctx, clock, guest, nic, wire, flush: (extra = []) => guest.flush(() => [...collect(nic), ...extra]) };
}

/** Spreads `rest` bytes over 1..17 page frags (each 1..4096 bytes), shaped by `moves`. */
function layout(rest: number, nfrags: number, moves: readonly [number, number, number][]): number[] {
  if (rest === 0) return [];
  const k = Math.max(Math.ceil(rest / PAGE_SIZE), Math.min(17, nfrags));
  const sizes = new Array<number>(k).fill(Math.floor(rest / k));
  for (let i = 0; i < rest % k; i++) sizes[i]!++;
  for (const [a, b, amt] of moves) {
    const i = a % k;
    const j = b % k;
    if (i !== j && sizes[i]! - amt >= 1 && sizes[j]! + amt <= PAGE_SIZE) {
      sizes[i]! -= amt;
      sizes[j]! += amt;
    }
  }
  return sizes;
}

function gsoSkb(ctx: SkbContext, guest: FakeGuest, frame: Uint8Array, mss: number, type: number, sizes: number[], offsets: number[] = []): SkBuff {
  const linear = Math.min(128, frame.length); // XEN_NETBACK_TX_COPY_LEN
  const skb = guestSkb(ctx, guest, frame, linear, sizes, offsets);
  skb.shinfo.gsoSize = mss;
  skb.shinfo.gsoType = type | SKB_GSO_DODGY;
  skb.shinfo.gsoSegs = 0;
  skb.ipSummed = CHECKSUM_PARTIAL;
  skb.csumStart = skb.data + ETH_HLEN + (type === SKB_GSO_TCPV6 ? 40 : 20);
  skb.csumOffset = 16;
  return skb;
}

/** Independent IPv6 TCP checksum check (RFC 8200 pseudo-header built as bytes). */
function tcp6ChecksumOk(f: Uint8Array): boolean {
  const l4 = f.length - ETH_HLEN - 40;
  const pseudo = new Uint8Array(40 + l4);
  pseudo.set(f.subarray(ETH_HLEN + 8, ETH_HLEN + 40), 0);
  pseudo[32] = l4 >>> 24;
  pseudo[33] = (l4 >>> 16) & 0xff;
  pseudo[34] = (l4 >>> 8) & 0xff;
  pseudo[35] = l4 & 0xff;
  pseudo[39] = IPPROTO_TCP;
  pseudo.set(f.subarray(ETH_HLEN + 40), 40);
  return csumFold(csumPartial(pseudo, 0, pseudo.length, 0)) === 0;
}

/** Checks the wire frames against the original GSO frame, as tcp_gso_segment + inet_gso_segment define them. */
function checkSegments(t: import('ava').ExecutionContext, orig: Uint8Array, frames: Uint8Array[], mss: number, v6: boolean, mtu: number): void {
  const hdr = ETH_HLEN + (v6 ? 40 : 20) + 20;
  const payload = orig.length - hdr;
  const n = Math.ceil(payload / mss);
  t.is(frames.length, n, 'segment count');
  const seq0 = get32(orig, hdr - 20 + 4);
  const flags0 = orig[hdr - 20 + 13]!;
  const id0 = get16(orig, ETH_HLEN + 4);
  for (let i = 0; i < frames.length; i++) {
    const f = frames[i]!;
    const plen = Math.min(mss, payload - i * mss);
    const last = i === n - 1;
    t.is(f.length, hdr + plen, `segment ${i} length`);
    t.true(f.length <= mtu + ETH_HLEN, 'fits the MTU');
    t.deepEqual(f.subarray(0, ETH_HLEN), orig.subarray(0, ETH_HLEN), 'Ethernet header');
    if (v6) {
      t.is(get16(f, ETH_HLEN + 4), f.length - ETH_HLEN - 40, 'payload_len');
      t.true(tcp6ChecksumOk(f), `segment ${i} TCP checksum`);
    } else {
      const ip = parseIpv4Header(f, ETH_HLEN, f.length - ETH_HLEN);
      if (!ip.ok) return void t.fail(`segment ${i}: ${ip.error}`);
      t.is(ip.value.totalLen, f.length - ETH_HLEN, 'tot_len');
      t.is(ip.value.id, (id0 + i) & 0xffff, 'id');
      t.true(l4ChecksumOk(f, ETH_HLEN + 20, f.length - ETH_HLEN - 20, IPPROTO_TCP, IP_A, IP_B), `segment ${i} TCP checksum`);
    }
    t.is(get32(f, hdr - 20 + 4), (seq0 + i * mss) >>> 0, 'seq');
    let want = flags0;
    if (!last) want &= ~0x09; // FIN, PSH only on the last segment
    if (i > 0) want &= ~0x80; // CWR only on the first
    t.is(f[hdr - 20 + 13], want, `segment ${i} flags`);
    t.deepEqual(f.subarray(hdr), orig.subarray(hdr + i * mss, hdr + i * mss + plen), `segment ${i} payload`);
  }
}

testProp(
  'TSO off: a GSO skb leaves as MSS-sized frames with fixed headers; with SG they share the guest pages, without SG they are copies',
  [
    fc.integer({ min: 1, max: 65495 }),
    fc.integer({ min: 88, max: 1460 }),
    fc.boolean(),
    fc.boolean(),
    fc.integer({ min: 1, max: 17 }),
    fc.array(fc.tuple(fc.nat(16), fc.nat(16), fc.integer({ min: 1, max: 3000 })), { maxLength: 20 }),
    fc.array(fc.nat(4095), { maxLength: 17 }),
    fc.constantFrom(0x18, 0x99, 0x10),
  ],
  (t, payload, mssIn, sg, v6, nfrags, moves, offsets, flags) => {
    const mss = v6 ? Math.min(mssIn, 1440) : mssIn; // what fits a 1500 MTU
    const r = rig({ features: { sg, tso: false }, completionDelayMs: 1 });
    const frame = v6 ? tcp6Frame({ payload: Math.min(payload, 65535 - 20), seq: 0xffff_f000, flags }) : tcp4Frame({ payload, id: 0xfffe, seq: 0xffff_f000, flags });
    const sizes = layout(frame.length - 128, nfrags, moves);
    const skb = gsoSkb(r.ctx, r.guest, frame, mss, v6 ? SKB_GSO_TCPV6 : SKB_GSO_TCPV4, sizes, offsets);
    const guestPages = new Set(reachableForeignPages([skb]));
    r.nic.startXmit(skb);
    r.flush();
    const held = collect(r.nic);
    t.is(r.nic.stats.segmented, 1);
    t.is(held.length, r.nic.stats.segments);
    if (sg) {
      const shared = reachableForeignPages(held);
      t.deepEqual(shared, guestPages, 'the segments hold the guest pages themselves');
      t.is(r.guest.mapped.size, guestPages.size, 'nothing returned while the segments are in the ring');
    } else {
      t.true(held.every((s) => s.shinfo.nrFrags === 0 && s.dataLen === 0), 'linear copies');
      t.is(reachableForeignPages(held).size, 0);
      t.is(r.guest.mapped.size, 0, 'copied: the consumed original returned its grants at segmentation');
    }
    while (r.nic.inFlight > 0) {
      r.clock.advance(1);
      r.nic.poll(r.clock.now());
    }
    checkSegments(t, frame, r.wire, mss, v6, 1500);
    r.flush();
    assertBalanced(t, r.ctx, r.guest);
  },
);

test('TSO on: the GSO skb goes to the hardware whole, gso_segs recounted; the wire sees the single large frame', (t) => {
  const r = rig({ features: { sg: true, tso: true } });
  const frame = tcp4Frame({ payload: 60000 });
  const skb = gsoSkb(r.ctx, r.guest, frame, 1448, SKB_GSO_TCPV4, layout(frame.length - 128, 17, []));
  r.nic.startXmit(skb);
  t.is(r.nic.stats.tsoFrames, 1);
  t.is(r.nic.stats.segmented, 0);
  t.is(collect(r.nic)[0], skb);
  t.is(skb.shinfo.gsoSegs, Math.ceil(60000 / 1448));
  r.clock.advance(1);
  r.nic.poll(r.clock.now());
  t.deepEqual(r.wire, [frame]);
  r.flush();
  assertBalanced(t, r.ctx, r.guest);
});

test('TSO on but a frag_list (no NETIF_F_FRAGLIST): segmented in software, frag_list pages shared', (t) => {
  const r = rig({ features: { sg: true, tso: true }, completionDelayMs: 0 });
  const frame = tcp4Frame({ payload: 9000 });
  // Head: 128 linear + 2 frags; the rest (beyond MAX_SKB_FRAGS in netback) on a frag_list skb.
  const skb = gsoSkb(r.ctx, r.guest, frame.subarray(0, 128 + 4000), 1000, SKB_GSO_TCPV4, [2000, 2000]);
  const child = guestSkb(r.ctx, r.guest, frame.subarray(128 + 4000), 0, [3000, 2054]);
  skb.shinfo.fragList = child;
  skb.len += child.len;
  skb.dataLen += child.len;
  const pages = reachableForeignPages([skb]);
  t.is(pages.size, 4);
  r.nic.startXmit(skb);
  t.is(r.nic.stats.segmented, 1);
  t.is(r.nic.stats.tsoFrames, 0);
  t.deepEqual(reachableForeignPages(collect(r.nic)), pages);
  t.is(r.flush(), 0);
  r.nic.poll(r.clock.now());
  checkSegments(t, frame, r.wire, 1000, false, 1500);
  r.flush();
  assertBalanced(t, r.ctx, r.guest);
});

test('SG off: a nonlinear frame is linearized; SG on: it keeps its frags; grants come back by completion, never before', (t) => {
  for (const sg of [false, true]) {
    const r = rig({ features: { sg, tso: false } });
    const frame = udpFrame({ payload: 1400 });
    const skb = guestSkb(r.ctx, r.guest, frame, 64, [700, 678]);
    r.nic.startXmit(skb);
    const held = collect(r.nic)[0]!;
    t.is(r.nic.stats.linearized, sg ? 0 : 1);
    t.is(held.shinfo.nrFrags, sg ? 2 : 0);
    // Under rusty the linearized skb's new head keeps an orig reference on the old shinfo, so the grants
    // stay out until it is freed (late, not early; mainline's __pskb_pull_tail would complete at once).
    t.is(r.flush(), 0);
    t.is(r.guest.mapped.size, 2);
    r.clock.advance(1);
    r.nic.poll(r.clock.now());
    t.deepEqual(r.wire, [frame]);
    r.flush();
    assertBalanced(t, r.ctx, r.guest);
  }
});

test('MTU: a non-GSO frame of MTU + ETH_HLEN passes, one byte more is dropped; GSO whose segments would not fit is dropped', (t) => {
  const r = rig({ features: { sg: true, tso: false }, mtu: 1000 });
  const fits = udpFrame({ payload: 1000 - 28 });
  const over = udpFrame({ payload: 1000 - 28 + 1 });
  r.nic.startXmit(guestSkb(r.ctx, r.guest, fits, 42, [4096]));
  r.nic.startXmit(guestSkb(r.ctx, r.guest, over, 42, [4096]));
  t.is(r.nic.stats.droppedMtu, 1);
  t.is(r.nic.inFlight, 1);
  const gso = tcp4Frame({ payload: 5000 });
  r.nic.startXmit(gsoSkb(r.ctx, r.guest, gso, 961, SKB_GSO_TCPV4, [4096, 1000])); // 54 + 961 > 1014
  t.is(r.nic.stats.droppedMtu, 2);
  r.nic.startXmit(gsoSkb(r.ctx, r.guest, gso, 960, SKB_GSO_TCPV4, [4096, 1000]));
  t.is(r.nic.stats.segments, 6);
  t.is(r.nic.stats.dropped, 2);
  r.clock.advance(1);
  r.nic.poll(r.clock.now());
  t.deepEqual(r.wire[0], fits);
  t.is(r.wire.length, 7);
  r.flush();
  assertBalanced(t, r.ctx, r.guest);
});

test('bad GSO headers are dropped with an exact reason, never thrown', (t) => {
  const cases: { name: string; edit: (f: Uint8Array) => void; type?: number; msg: string }[] = [
    { name: 'ethertype', edit: (f) => (f[12] = 0x86), msg: 'GSO ethertype is corrupt: expected 0x800 but got 0x8600' },
    { name: 'version', edit: (f) => (f[14] = 0x65), msg: 'GSO IPv4 version is corrupt: expected 4 but got 6' },
    { name: 'ihl', edit: (f) => (f[14] = 0x44), msg: 'GSO IPv4 ihl is corrupt: expected 20 <= x <= 1040 but got 16' },
    { name: 'protocol', edit: (f) => (f[23] = 17), msg: 'GSO IPv4 protocol is corrupt: expected 6 but got 17' },
    { name: 'doff', edit: (f) => (f[46] = 0x40), msg: 'GSO TCP doff is corrupt: expected 20 <= x <= 1020 but got 16' },
    { name: 'type', edit: () => {}, type: 1 << 9, msg: 'GSO type is unsupported: expected SKB_GSO_TCPV4 or SKB_GSO_TCPV6 but got 0x202' },
    { name: 'v6 on v4', edit: () => {}, type: SKB_GSO_TCPV6, msg: 'GSO ethertype is corrupt: expected 0x86dd but got 0x800' },
  ];
  for (const c of cases) {
    const r = rig({ features: { sg: true, tso: false } });
    const frame = tcp4Frame({ payload: 1000 });
    c.edit(frame);
    const skb = gsoSkb(r.ctx, r.guest, frame, 500, c.type ?? SKB_GSO_TCPV4, [4096]);
    t.notThrows(() => r.nic.startXmit(skb), c.name);
    t.is(r.nic.stats.droppedBad, 1, c.name);
    t.is(r.nic.lastError, c.msg, c.name);
    r.flush();
    assertBalanced(t, r.ctx, r.guest);
  }
  // Header-only GSO frame and a GSO frame too short for TCP.
  const r = rig({ features: { sg: true, tso: true } });
  const headerOnly = tcp4Frame({ payload: 0 });
  r.nic.startXmit(gsoSkb(r.ctx, r.guest, headerOnly, 500, SKB_GSO_TCPV4, []));
  t.is(r.nic.lastError, 'GSO frame has no payload: 54 bytes with 54 bytes of headers');
  const h = parseTcpGsoHeaders(headerOnly, 0, 40, SKB_GSO_TCPV4);
  t.deepEqual(h, { ok: false, error: 'GSO TCP header is truncated: expected >= 54 bytes but got 40' });
  t.deepEqual(parseTcpGsoHeaders(headerOnly, 0, 20, SKB_GSO_TCPV4), { ok: false, error: 'GSO IPv4 header is truncated: expected >= 34 bytes but got 20' });
  const tiny = allocSkb(r.ctx, 64);
  tiny.shinfo.gsoSize = 0;
  t.deepEqual(tcpGsoCheck(tiny), { ok: false, error: 'GSO size is corrupt: expected > 0 but got 0' });
  kfreeSkb(tiny);
  r.nic.startXmit(guestSkb(r.ctx, r.guest, headerOnly.subarray(0, 13), 13));
  t.is(r.nic.stats.droppedBad, 2);
  r.flush();
  assertBalanced(t, r.ctx, r.guest);
});

testProp(
  'completion: each frame reaches the wire at the first poll at or after entering the ring + delay, in order',
  [fc.double({ min: 0, max: 5, noNaN: true }), fc.array(fc.tuple(fc.double({ min: 0, max: 3, noNaN: true }), fc.boolean()), { minLength: 1, maxLength: 30 })],
  (t, delay, steps) => {
    const r = rig({ features: { sg: true, tso: false }, completionDelayMs: delay });
    const sentAt: number[] = [];
    let n = 0;
    for (const [dt, send] of steps) {
      r.clock.advance(dt);
      const now = r.clock.now();
      if (send) {
        r.nic.startXmit(guestSkb(r.ctx, r.guest, udpFrame({ payload: 10 + (n % 200) }), 40, [4096]));
        sentAt.push(now);
        n++;
      }
      const before = r.wire.length;
      r.nic.poll(now);
      const due = sentAt.filter((s) => s + delay <= now).length;
      t.is(r.wire.length, due, `at ${now}`);
      for (let i = before; i < r.wire.length; i++) t.is(r.wire[i]!.length, 52 + (i % 200), 'in order');
      t.is(r.nic.inFlight, sentAt.length - due);
      r.flush();
    }
    r.clock.advance(delay);
    r.nic.poll(r.clock.now());
    r.flush();
    assertBalanced(t, r.ctx, r.guest);
  },
);

test('stall: nothing completes (and no grant comes back) before the stall ends', (t) => {
  const r = rig({ features: { sg: true, tso: false }, completionDelayMs: 1 });
  r.nic.startXmit(guestSkb(r.ctx, r.guest, udpFrame({ payload: 500 }), 42, [4096]));
  r.nic.stall(100);
  t.true(r.nic.isStalled());
  r.clock.advance(50);
  r.nic.poll(r.clock.now());
  t.is(r.wire.length, 0);
  t.is(r.nic.nextDeadline(), 100);
  t.is(r.flush(), 0);
  t.is(r.guest.mapped.size, 1, 'the stalled ring pins the grant');
  r.clock.advance(49.9);
  r.nic.poll(r.clock.now());
  t.is(r.wire.length, 0);
  r.clock.advance(0.1);
  r.nic.poll(r.clock.now());
  t.is(r.wire.length, 1);
  t.is(r.flush(), 1);
  assertBalanced(t, r.ctx, r.guest);
});

test('full ring: frames wait in the pfifo qdisc, then are tail-dropped; forEachSkb visits each held skb once', (t) => {
  const r = rig({ features: { sg: true, tso: false }, ringSize: 4, txQueueLen: 2, completionDelayMs: 1 });
  const frames = [0, 1, 2, 3, 4, 5, 6].map((i) => udpFrame({ payload: 100 + i }));
  for (const f of frames) r.nic.startXmit(guestSkb(r.ctx, r.guest, f, 42, [4096]));
  t.is(r.nic.inFlight, 4);
  t.is(r.nic.queued, 2);
  t.is(r.nic.stats.droppedQueue, 1);
  const held = collect(r.nic);
  t.is(held.length, 6);
  t.is(new Set(held).size, 6);
  t.is(r.flush(), 1, 'the dropped frame returned its grant');
  r.clock.advance(1);
  r.nic.poll(r.clock.now());
  t.is(r.wire.length, 4);
  t.is(r.nic.inFlight, 2, 'qdisc refilled the ring');
  t.is(r.nic.nextDeadline(), 2);
  r.clock.advance(1);
  r.nic.poll(r.clock.now());
  t.deepEqual(r.wire, frames.slice(0, 6));
  r.flush();
  // No qdisc: a full ring drops at once.
  const q = rig({ features: { sg: true, tso: false }, ringSize: 1, txQueueLen: 0 });
  q.nic.startXmit(guestSkb(q.ctx, q.guest, frames[0]!, 42, [4096]));
  q.nic.startXmit(guestSkb(q.ctx, q.guest, frames[1]!, 42, [4096]));
  t.is(q.nic.stats.droppedQueue, 1);
  q.nic.purge();
  t.is(q.nic.stats.purged, 1);
  q.flush();
  assertBalanced(t, r.ctx, r.guest);
  assertBalanced(t, q.ctx, q.guest);
});

test('wire loss comes from the seeded Random: lost frames are freed like sent ones', (t) => {
  const r = rig({ features: { sg: true, tso: false }, loss: 0.5, random: new Random(42), completionDelayMs: 0 });
  for (let i = 0; i < 200; i++) r.nic.startXmit(guestSkb(r.ctx, r.guest, udpFrame({ payload: 20 }), 42, [4096]));
  r.nic.poll(r.clock.now());
  t.is(r.nic.stats.lost + r.wire.length, 200);
  t.true(r.nic.stats.lost > 60 && r.nic.stats.lost < 140, `${r.nic.stats.lost} lost`);
  r.flush();
  assertBalanced(t, r.ctx, r.guest);
  t.throws(() => new Nic({ clock: new VirtualClock(), features: { sg: true, tso: true }, loss: 0.1 }), { message: 'nic loss > 0 needs a Random' });
  t.throws(() => new Nic({ clock: new VirtualClock(), features: { sg: true, tso: true }, ringSize: 0 }), { message: 'nic ringSize must be an integer in [1, 65536], got 0' });
  t.deepEqual(new Nic({ clock: new VirtualClock(), features: { sg: false, tso: true } }).features, { sg: false, tso: false }, 'TSO needs SG');
});

test('the NIC tap sees frames as they enter the ring: segments, not the GSO skb', (t) => {
  const r = rig({ features: { sg: true, tso: false } });
  const seen: number[] = [];
  r.nic.tap = { capture: (skb) => void seen.push(skb.len) };
  r.nic.startXmit(gsoSkb(r.ctx, r.guest, tcp4Frame({ payload: 3000 }), 1000, SKB_GSO_TCPV4, [4096]));
  t.deepEqual(seen, [1054, 1054, 1054]);
  r.nic.purge();
  r.flush();
  assertBalanced(t, r.ctx, r.guest);
});

test('naive design: segments sharing frags let the grants go back while the ring still holds them (negative control)', (t) => {
  const r = rig({ features: { sg: true, tso: false } }, naive);
  const frame = tcp4Frame({ payload: 8000 });
  r.nic.startXmit(gsoSkb(r.ctx, r.guest, frame, 1000, SKB_GSO_TCPV4, [4096, 4096]));
  r.flush();
  t.true(r.guest.problems.some((p) => p.includes('while a live skb still has it')), r.guest.problems.join('; '));
  r.nic.purge();
});
