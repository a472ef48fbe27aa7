// Frame builders, the receive-side verifier, the TCP bulk sender (alone, and against the backend's real local
// TCP endpoint and remote peer), and the seeded traffic mix.
import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { VirtualClock } from '../../shared/clock.js';
import { ETH_BROADCAST, ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_ZLEN, parseEthHeader, readMac, writeEthHeader } from '../../shared/ether.js';
import {
  IPPROTO_TCP,
  IPPROTO_UDP,
  IPV4_HLEN,
  TCPHDR_ACK,
  TCPHDR_FIN,
  TCPHDR_PSH,
  TCPHDR_RST,
  TCPHDR_SYN,
  TCP_CSUM_OFFSET,
  TCP_HLEN,
  UDP_CSUM_OFFSET,
  UDP_HLEN,
  completePartialChecksum,
  csumFold16,
  get16,
  ipv4,
  l4ChecksumOk,
  parseIpv4Header,
  pseudoHeaderSum,
  writeIpv4Header,
  writeL4Checksum,
  writeTcpHeader,
  writeUdpHeader,
} from '../../shared/inet.js';
import { NETRXF_csum_blank, NETRXF_data_validated } from '../../shared/netif.js';
import { checkTaggedPayload, fillPattern, findPatternMismatch, patternByte, writeTaggedPayload } from '../../shared/payload.js';
import { Random } from '../../shared/random.js';
import { rusty } from '../../backend/release.js';
import { SkbContext, kfreeSkb } from '../../backend/skbuff.js';
import { TcpEndpoint, parseTcpFrame } from '../../backend/tcp.js';
import { TcpPeer } from '../../backend/tcp-peer.js';
import { EP_IP, EP_MAC, EP_PORT, FakeNic, PEER_IP, PEER_MAC, PEER_PORT, bytesOf, linearSkb } from '../backend/tcp-rig.js';
import {
  FRAME_TCP,
  FrameVerifier,
  MIX_DEFAULT_WEIGHTS,
  MIX_MIN_FRAME,
  PatternCache,
  RX_BAD_CHECKSUM,
  RX_BAD_FRAME,
  RX_CORRUPT_PAYLOAD,
  RX_UNVERIFIED,
  RX_VERIFIED,
  TCP_CLOSE,
  TCP_DONE,
  TCP_ESTABLISHED,
  TCP_MAX_FRAME_PAYLOAD,
  TCP_SYN_SENT,
  TcpBulkSender,
  TrafficMix,
  TxFrame,
  formatMixSettings,
  parseMixSettings,
  type Flow,
  type MixSettings,
} from '../../frontend/traffic.js';

const GUEST_MAC = 0x02_00_00_00_00_31;
const GUEST_IP = ipv4(10, 0, 0, 31);
const FLOW: Flow = { srcMac: GUEST_MAC, dstMac: 0x02_00_00_00_00_32, saddr: GUEST_IP, daddr: ipv4(10, 0, 0, 32), sport: 40001, dport: 9 };

// ---------------------------------------------------------------------------------------------------------
// Pattern cache

testProp(
  'PatternCache.fill writes exactly what payload.ts fillPattern writes, across the period and the u32 wrap',
  [fc.nat({ max: 5 }), fc.oneof(fc.nat(), fc.integer({ min: 0xffff0000, max: 0xffffffff })), fc.integer({ min: 0, max: 140_000 })],
  (t, stream, pos, len) => {
    const cache = new PatternCache(2);
    const a = new Uint8Array(len + 2);
    const b = new Uint8Array(len + 2);
    cache.fill(a, 1, len, stream, pos);
    fillPattern(b, 1, len, stream, pos);
    t.deepEqual(a, b);
  },
  { numRuns: 60 },
);

testProp(
  'one PatternCache shared by many streams (tables keyed by stream key, with eviction) still writes fillPattern bytes',
  [fc.array(fc.tuple(fc.nat(), fc.nat(), fc.integer({ min: 1, max: 3000 })), { minLength: 1, maxLength: 80 })],
  (t, fills) => {
    const cache = new PatternCache(3);
    for (const [stream, pos, len] of fills) {
      const a = new Uint8Array(len);
      const b = new Uint8Array(len);
      cache.fill(a, 0, len, stream, pos);
      fillPattern(b, 0, len, stream, pos);
      t.deepEqual(a, b);
    }
  },
  { numRuns: 40 },
);

testProp(
  'regression: a full PatternCache serves the base table (right bytes) instead of evicting and allocating per frame',
  [fc.array(fc.tuple(fc.nat(3), fc.nat(7)), { minLength: 30, maxLength: 80 })],
  (t, uses) => {
    const cache = new PatternCache(2);
    const seen = new Set<Uint8Array>();
    for (const [stream, shift] of uses) {
      const tab = cache.alignedTable(stream, shift);
      seen.add(tab);
      for (const i of [0, 1, 255, 4097, 65535, 131071]) t.is(tab[i], patternByte(stream >>> 0, i));
    }
    // At most `capacity` aligned copies plus one base table per stream key were ever built: no churn.
    const keys = new Set(uses.map(([s]) => Math.imul(s >>> 0, 101) & 0xff));
    t.true(seen.size <= 2 + keys.size, `${seen.size} tables for ${keys.size} stream keys`);
  },
  { numRuns: 50 },
);

// ---------------------------------------------------------------------------------------------------------
// Frames

for (const csumBlank of [false, true]) {
  test(`a UDP frame (csum_blank ${csumBlank}) parses, carries its tag and pattern, and checksums as Linux would`, (t) => {
    const f = new TxFrame().setUdp(FLOW, 77, 123456, 300, csumBlank);
    f.ipId = 42;
    const b = f.toBytes();
    t.is(b.length, ETH_HLEN + IPV4_HLEN + UDP_HLEN + 300);
    const eth = parseEthHeader(b, 0, b.length);
    t.deepEqual(eth, { ok: true, value: { dst: FLOW.dstMac, src: FLOW.srcMac, proto: ETH_P_IP } });
    const ip = parseIpv4Header(b, ETH_HLEN, b.length - ETH_HLEN);
    t.true(ip.ok);
    if (!ip.ok) return;
    t.is(ip.value.proto, IPPROTO_UDP);
    t.is(ip.value.id, 42);
    t.is(ip.value.totalLen, IPV4_HLEN + UDP_HLEN + 300);
    const l4 = ETH_HLEN + IPV4_HLEN;
    t.is(get16(b, l4), FLOW.sport);
    t.is(get16(b, l4 + 2), FLOW.dport);
    t.is(get16(b, l4 + 4), UDP_HLEN + 300);
    t.deepEqual(checkTaggedPayload(b, l4 + UDP_HLEN, 300), { ok: true, value: { stream: 77, pos: 123456 } });
    const l4len = UDP_HLEN + 300;
    if (csumBlank) {
      t.is(get16(b, l4 + UDP_CSUM_OFFSET), csumFold16(pseudoHeaderSum(FLOW.saddr, FLOW.daddr, IPPROTO_UDP, l4len)), 'only the pseudo-header sum');
      completePartialChecksum(b, l4, l4len, l4 + UDP_CSUM_OFFSET);
    }
    t.true(l4ChecksumOk(b, l4, l4len, IPPROTO_UDP, FLOW.saddr, FLOW.daddr));
  });
}

// The frame as the inet.ts and payload.ts primitives build it, contiguously: what every writer must produce.
function referenceFrame(f: TxFrame): Uint8Array {
  const b = new Uint8Array(f.len);
  const udp = f.kind !== FRAME_TCP;
  const l4hdr = udp ? UDP_HLEN : TCP_HLEN;
  const l4len = l4hdr + f.payloadLen;
  const proto = udp ? IPPROTO_UDP : IPPROTO_TCP;
  writeEthHeader(b, 0, f.dstMac, f.srcMac, ETH_P_IP);
  writeIpv4Header(b, ETH_HLEN, { totalLen: IPV4_HLEN + l4len, id: f.ipId, ttl: f.ttl, proto, saddr: f.saddr, daddr: f.daddr });
  const l4 = ETH_HLEN + IPV4_HLEN;
  if (udp) {
    writeUdpHeader(b, l4, f.sport, f.dport, l4len);
    writeTaggedPayload(b, l4 + UDP_HLEN, f.payloadLen, f.stream, f.pos);
  } else {
    writeTcpHeader(b, l4, { sport: f.sport, dport: f.dport, seq: f.seq, ack: f.ack, flags: f.tcpFlags, window: f.window });
    fillPattern(b, l4 + TCP_HLEN, f.payloadLen, f.stream, f.pos);
  }
  writeL4Checksum(b, l4, l4len, proto, f.saddr, f.daddr, f.csumBlank);
  return b;
}

testProp(
  'writeTo (into a shared page), writeAt (into a whole memory) and writePages (across pages, from any offset) write exactly the reference frame',
  [
    fc.boolean(),
    fc.oneof(fc.integer({ min: 0, max: 3000 }), fc.integer({ min: 0, max: 65535 - ETH_HLEN - IPV4_HLEN - TCP_HLEN })),
    fc.boolean(),
    fc.nat({ max: 0xffffffff }),
    fc.nat({ max: 0xffffffff }),
    fc.nat({ max: 0xffff }),
    fc.nat({ max: 4096 - ETH_HLEN }),
  ],
  (t, udp, size, csumBlank, stream, pos, ipId, offset) => {
    const f = new TxFrame();
    if (udp) f.setUdp(FLOW, stream, pos, Math.max(8, Math.min(size, 0xffff - IPV4_HLEN - UDP_HLEN)), csumBlank);
    else f.setTcp(FLOW, stream, pos ^ 0x5a5a, TCPHDR_ACK, ipId, stream, pos, size, 0);
    f.csumBlank = csumBlank;
    f.ipId = ipId;
    const want = referenceFrame(f);
    const mem = new Uint8Array(new SharedArrayBuffer(20 * 4096)).fill(0xee);
    const pages = Array.from({ length: 20 }, (_, i) => mem.subarray(i * 4096, (i + 1) * 4096));
    const n = Math.ceil((offset + f.len) / 4096);
    f.writePages(pages, n, offset);
    t.deepEqual(mem.subarray(offset, offset + f.len), want);
    t.true(mem.subarray(0, offset).every((x) => x === 0xee) && mem.subarray(offset + f.len).every((x) => x === 0xee), 'nothing outside the frame');
    if (offset + f.len <= 4096) {
      const page = new Uint8Array(new SharedArrayBuffer(4096)).fill(0xee);
      f.writeTo(page, offset);
      t.deepEqual(page.subarray(offset, offset + f.len), want);
      t.true(page.subarray(0, offset).every((x) => x === 0xee) && page.subarray(offset + f.len).every((x) => x === 0xee));
      // writeAt: the same frame at an absolute offset of a whole memory, through a DataView of it.
      const whole = new Uint8Array(new SharedArrayBuffer(3 * 4096)).fill(0xee);
      const at = 4096 + offset;
      f.writeAt(whole, new DataView(whole.buffer), at);
      t.deepEqual(whole.subarray(at, at + f.len), want);
      t.true(whole.subarray(0, at).every((x) => x === 0xee) && whole.subarray(at + f.len).every((x) => x === 0xee));
    }
    t.deepEqual(f.toBytes(), want);
  },
  { numRuns: 60 },
);

test('writeTo, writeAt and writePages refuse a frame that does not fit where it is asked to go', (t) => {
  const f = new TxFrame().setUdp(FLOW, 1, 0, 200, false);
  t.throws(() => f.writeTo(new Uint8Array(100), 0), { message: `frame of ${f.len} bytes does not fit at 0 in 100 bytes` });
  t.throws(() => f.writeTo(new Uint8Array(300), 100), { message: `frame of ${f.len} bytes does not fit at 100 in 300 bytes` });
  const whole = new Uint8Array(300);
  t.throws(() => f.writeAt(whole, new DataView(whole.buffer), 100), { message: `frame of ${f.len} bytes does not fit at 100 in 300 bytes` });
  const pages = [new Uint8Array(4096), new Uint8Array(4096)];
  t.throws(() => f.writePages(pages, 1, 4000), { message: `1 pages from offset 4000 hold 96 of the frame's ${f.len} bytes` });
});

test('a short UDP frame is padded with zeros to ETH_ZLEN; the IPv4 length excludes the padding', (t) => {
  const b = new TxFrame().setUdp(FLOW, 1, 0, 9, false).toBytes();
  t.is(b.length, ETH_ZLEN);
  t.is(get16(b, ETH_HLEN + 2), IPV4_HLEN + UDP_HLEN + 9);
  t.true(b.subarray(ETH_HLEN + IPV4_HLEN + UDP_HLEN + 9).every((x) => x === 0));
  t.is(new FrameVerifier().verify(b, 0, b.length, 0), RX_VERIFIED);
});

test('a TCP segment parses with the endpoint parser; payload = stream pattern at pos; pseudo-header checksum', (t) => {
  const f = new TxFrame().setTcp(FLOW, 0xfffffff0, 99, TCPHDR_ACK | TCPHDR_PSH, 5000, 40001, 70000, 2000, 0);
  const b = f.toBytes();
  t.is(f.kind, FRAME_TCP);
  t.true(f.csumBlank, 'locally generated TCP is CHECKSUM_PARTIAL');
  const p = parseTcpFrame(b, 0, b.length);
  t.true(p.ok);
  if (!p.ok) return;
  t.like(p.value.tcp, { sport: 40001, dport: 9, seq: 0xfffffff0, ack: 99, flags: TCPHDR_ACK | TCPHDR_PSH, window: 5000, doff: TCP_HLEN });
  t.is(p.value.payloadLen, 2000);
  t.is(findPatternMismatch(b, p.value.payloadOff, 2000, 40001, 70000), -1);
  const th = ETH_HLEN + IPV4_HLEN;
  t.is(get16(b, th + TCP_CSUM_OFFSET), csumFold16(pseudoHeaderSum(FLOW.saddr, FLOW.daddr, IPPROTO_TCP, TCP_HLEN + 2000)));
  t.throws(() => f.setTcp(FLOW, 0, 0, 0, 0, 0, 0, TCP_MAX_FRAME_PAYLOAD + 1, 0), { message: `TCP payload must be 0..${TCP_MAX_FRAME_PAYLOAD} bytes but got ${TCP_MAX_FRAME_PAYLOAD + 1}` });
  t.is(new TxFrame().setTcp(FLOW, 0, 0, 0, 0, 0, 0, TCP_MAX_FRAME_PAYLOAD, 1460).len, 0xffff, 'the largest segment fills a tx_request size');
});

// ---------------------------------------------------------------------------------------------------------
// Verifier

function arp(): Uint8Array {
  const b = new Uint8Array(60);
  writeEthHeader(b, 0, ETH_BROADCAST, GUEST_MAC, ETH_P_ARP);
  return b;
}

const verdicts: { name: string; frame: () => Uint8Array; flags: number; verdict: number; error: string | null }[] = [
  { name: 'a good UDP datagram', frame: () => new TxFrame().setUdp(FLOW, 5, 0, 200, false).toBytes(), flags: 0, verdict: RX_VERIFIED, error: null },
  { name: 'a csum_blank UDP datagram, trusted', frame: () => new TxFrame().setUdp(FLOW, 5, 0, 200, true).toBytes(), flags: NETRXF_csum_blank, verdict: RX_VERIFIED, error: null },
  { name: 'a csum_blank datagram without the flag', frame: () => new TxFrame().setUdp(FLOW, 5, 0, 200, true).toBytes(), flags: 0, verdict: RX_BAD_CHECKSUM, error: 'UDP checksum is wrong' },
  { name: 'an ARP frame', frame: arp, flags: 0, verdict: RX_UNVERIFIED, error: null },
  { name: 'a TCP ACK', frame: () => new TxFrame().setTcp(FLOW, 1, 2, TCPHDR_ACK, 100, 0, 0, 0, 0).toBytes(), flags: NETRXF_data_validated, verdict: RX_UNVERIFIED, error: null },
  { name: 'a truncated frame', frame: () => new Uint8Array(10), flags: 0, verdict: RX_BAD_FRAME, error: 'frame is too short: expected >= 14 bytes but got 10' },
  {
    name: 'a UDP length that disagrees with IPv4',
    frame: () => {
      const b = new TxFrame().setUdp(FLOW, 5, 0, 200, false).toBytes();
      b[ETH_HLEN + IPV4_HLEN + 5]! += 1;
      return b;
    },
    flags: 0,
    verdict: RX_BAD_FRAME,
    error: 'UDP length is corrupt: expected 208 but got 209',
  },
  {
    name: 'a payload from the wrong stream position',
    frame: () => {
      const b = new TxFrame().setUdp(FLOW, 5, 0, 200, false).toBytes();
      b[ETH_HLEN + IPV4_HLEN + UDP_HLEN + 4] = 1; // tag pos 0 -> 1
      return b;
    },
    flags: NETRXF_data_validated,
    verdict: RX_CORRUPT_PAYLOAD,
    error: 'payload is corrupt at byte 8: expected 0xf4 but got 0xf9',
  },
];

for (const c of verdicts) {
  test(`the verifier: ${c.name}`, (t) => {
    const v = new FrameVerifier();
    const b = c.frame();
    t.is(v.verify(b, 0, b.length, c.flags), c.verdict);
    t.is(v.error, c.error);
  });
}

// ---------------------------------------------------------------------------------------------------------
// TCP sender, scripted

const EP_FLOW: Flow = { srcMac: GUEST_MAC, dstMac: EP_MAC, saddr: GUEST_IP, daddr: EP_IP, sport: 10001, dport: EP_PORT };

/** A segment from the endpoint to the guest. */
function fromEp(seq: number, ack: number, flags: number, window: number): Uint8Array {
  const back: Flow = { srcMac: EP_MAC, dstMac: GUEST_MAC, saddr: EP_IP, daddr: GUEST_IP, sport: EP_PORT, dport: 10001 };
  return new TxFrame().setTcp(back, seq, ack, flags, window, 0, 0, 0, 0).toBytes();
}

function sender(opts: Partial<ConstructorParameters<typeof TcpBulkSender>[0]> = {}): { s: TcpBulkSender; clock: VirtualClock; f: TxFrame; isn: number } {
  const clock = new VirtualClock();
  const s = new TcpBulkSender({ clock, random: new Random(1), flow: EP_FLOW, mss: 1000, rtoMs: 100, ...opts });
  const f = new TxFrame();
  s.open();
  t0(s.next(f, clock.now()));
  return { s, clock, f, isn: f.seq };
}

function t0(ok: boolean): void {
  if (!ok) throw new Error('expected a segment');
}

test('TCP sender: SYN, SYN retransmitted on timeout, then data on the SYN-ACK', (t) => {
  const { s, clock, f, isn } = sender();
  t.is(f.tcpFlags, TCPHDR_SYN);
  t.is(f.payloadLen, 0);
  t.is(s.state, TCP_SYN_SENT);
  t.false(s.next(f, clock.now()), 'nothing before the RTO');
  clock.advance(100);
  t.true(s.next(f, clock.now()));
  t.is(f.tcpFlags, TCPHDR_SYN);
  t.is(f.seq, isn);
  t.is(s.stats.timeouts, 1);
  t.true(s.receive(fromEp(5000, (isn + 1) >>> 0, TCPHDR_SYN | TCPHDR_ACK, 2500), 0, 60));
  t.is(s.state, TCP_ESTABLISHED);
  t.true(s.next(f, clock.now()));
  t.like(f, { seq: (isn + 1) >>> 0, ack: 5001, payloadLen: 1000, stream: 10001, pos: 0, gsoSize: 0 });
  t.is(f.tcpFlags & TCPHDR_ACK, TCPHDR_ACK);
  t.true(s.next(f, clock.now()));
  t.like(f, { seq: (isn + 1001) >>> 0, payloadLen: 1000, pos: 1000 });
  t.false(s.next(f, clock.now()), 'the 500 bytes left of the window are too few while data is in flight');
  t.false(s.receive(fromEp(5001, 0, TCPHDR_ACK, 0), 0, 10), 'a runt is not ours');
});

test('TCP sender: cumulative ACKs open the window; a timeout goes back to snd_una; FIN after the last byte', (t) => {
  const { s, clock, f, isn } = sender({ totalBytes: 2500 });
  s.receive(fromEp(7, (isn + 1) >>> 0, TCPHDR_SYN | TCPHDR_ACK, 10000), 0, 60);
  const sent: number[] = [];
  while (s.next(f, clock.now())) sent.push(f.pos, f.payloadLen);
  t.deepEqual(sent, [0, 1000, 1000, 1000, 2000, 500, 0, 0], 'three segments, then the FIN at once');
  s.receive(fromEp(8, (isn + 1 + 1000) >>> 0, TCPHDR_ACK, 10000), 0, 60);
  t.is(s.stats.bytesAcked, 1000);
  clock.advance(100);
  t.true(s.next(f, clock.now()));
  t.like(f, { pos: 1000, payloadLen: 1000 });
  t.is(s.stats.retransmitSegments, 1);
  t.true(s.next(f, clock.now()));
  t.like(f, { pos: 2000, payloadLen: 500 });
  t.true(s.next(f, clock.now()), 'then the FIN');
  t.is(f.tcpFlags, TCPHDR_FIN | TCPHDR_ACK);
  t.is(f.seq, (isn + 2501) >>> 0);
  // The endpoint takes everything and answers FIN|ACK at once.
  s.receive(fromEp(8, (isn + 2502) >>> 0, TCPHDR_ACK | TCPHDR_FIN, 10000), 0, 60);
  t.true(s.next(f, clock.now()), 'the last ACK');
  t.is(f.tcpFlags, TCPHDR_ACK);
  t.is(f.ack, 9);
  t.is(s.state, TCP_DONE);
  t.is(s.stats.bytesAcked, 2500);
  t.false(s.next(f, clock.now()));
});

test('TCP sender: a RST closes it; an ACK of unsent data is refused; a zero window is probed on the timer', (t) => {
  const a = sender();
  a.s.receive(fromEp(7, (a.isn + 1) >>> 0, TCPHDR_SYN | TCPHDR_ACK, 0), 0, 60);
  t.false(a.s.next(a.f, a.clock.now()) && a.f.payloadLen > 0, 'no data into a zero window');
  a.clock.advance(100);
  t.true(a.s.next(a.f, a.clock.now()));
  t.is(a.f.payloadLen, 1, 'a one-byte probe');
  t.true(a.s.receive(fromEp(8, (a.isn + 5000) >>> 0, TCPHDR_ACK, 100), 0, 60));
  t.is(a.s.stats.badSegments, 1);
  a.s.receive(fromEp(8, 0, TCPHDR_RST, 0), 0, 60);
  t.is(a.s.state, TCP_CLOSE);
  t.is(a.s.stats.resets, 1);
  t.false(a.s.next(a.f, a.clock.now()));
});

// ---------------------------------------------------------------------------------------------------------
// TCP sender against the real endpoint (backend/tcp.ts) and the remote peer that checks every byte

function runAgainstEndpoint(seed: number, gso: boolean, guestLoss: number, total: number): { sender: TcpBulkSender; ep: TcpEndpoint; peer: TcpPeer; steps: number } {
  const clock = new VirtualClock();
  const random = new Random(seed);
  const ctx = new SkbContext({ design: rusty, poisonFreed: true });
  let peer: TcpPeer | null = null;
  const nic = new FakeNic(clock, random.fork(), true, 0.2, 0, 0, (skb) => peer!.wire(skb));
  let ep: TcpEndpoint | null = null;
  peer = new TcpPeer({ clock, random: random.fork(), mac: PEER_MAC, ip: PEER_IP, port: PEER_PORT, deliver: (frame) => ep!.uplinkReceive(frame), rttMs: 1 });
  const toGuest: Uint8Array[] = [];
  ep = new TcpEndpoint({ ctx, clock, random: random.fork(), mac: EP_MAC, ip: EP_IP, port: EP_PORT, uplink: nic, peerMac: PEER_MAC, peerIp: PEER_IP, peerPort: PEER_PORT, rtoMinMs: 20, rtoInitMs: 100 });
  ep.connectLan((skb) => {
    toGuest.push(bytesOf(skb));
    kfreeSkb(skb);
  });
  const s = new TcpBulkSender({ clock, random: random.fork(), flow: EP_FLOW, mss: 1460, gso, totalBytes: total, rtoMs: 50 });
  s.open();
  const f = new TxFrame();
  let steps = 0;
  const finished = (): boolean => (s.state === TCP_DONE || s.state === TCP_CLOSE) && peer!.stream(EP_FLOW.sport)?.finished === true && ep!.connections === 0;
  for (; steps < 100_000 && !finished(); steps++) {
    const now = clock.now();
    let did = 0;
    for (let k = 0; k < 8 && s.next(f, now); k++) {
      did++;
      if (random.chance(guestLoss)) continue;
      ep.startXmit(linearSkb(ctx, f.toBytes()));
    }
    ep.poll(now);
    nic.poll(now);
    peer.poll(now);
    for (const b of toGuest.splice(0)) {
      did++;
      if (!random.chance(guestLoss)) s.receive(b, 0, b.length);
    }
    if (did > 0) continue;
    const next = Math.min(ep.nextDeadline(), nic.nextDeadline(), peer.nextDeadline(), s.nextDeadline());
    clock.advance(next === Infinity || next <= now ? 1 : next - now);
  }
  return { sender: s, ep, peer, steps };
}

for (const c of [
  { seed: 1, gso: false, loss: 0 },
  { seed: 2, gso: true, loss: 0 },
  { seed: 3, gso: false, loss: 0.05 },
  { seed: 4, gso: true, loss: 0.05 },
]) {
  test(`TCP sender against the local endpoint (gso ${c.gso}, guest-side loss ${c.loss}): every byte reaches the peer intact, then FIN`, (t) => {
    const total = 300_000;
    const r = runAgainstEndpoint(c.seed, c.gso, c.loss, total);
    t.is(r.sender.state, TCP_DONE, `seed ${c.seed}: sender state ${r.sender.state} after ${r.steps} steps`);
    const p = r.peer.stream(EP_FLOW.sport);
    t.is(p?.bytes, total);
    t.true(p?.finished);
    t.is(r.peer.stats.corruptSegments, 0, r.peer.firstError ?? '');
    t.is(r.ep.stats.badFrames, 0, r.ep.lastError ?? '');
    if (c.loss === 0) t.is(r.ep.stats.noConnection, 0, 'no segment after the endpoint closed');
    t.is(r.sender.stats.bytesAcked, total);
    if (c.gso) t.true(r.sender.stats.gsoSegments > 0);
    if (c.loss > 0) t.true(r.sender.stats.retransmitSegments > 0);
  });
}

// ---------------------------------------------------------------------------------------------------------
// The mix

function mix(seed: number, opts: Partial<ConstructorParameters<typeof TrafficMix>[0]> = {}): TrafficMix {
  return new TrafficMix({
    clock: new VirtualClock(),
    random: new Random(seed),
    self: { mac: GUEST_MAC, ip: GUEST_IP },
    guests: [
      { mac: 0x02_00_00_00_00_41, ip: ipv4(10, 0, 0, 41) },
      { mac: 0x02_00_00_00_00_42, ip: ipv4(10, 0, 0, 42) },
    ],
    uplink: { mac: PEER_MAC, ip: PEER_IP },
    tcpEndpoint: { mac: EP_MAC, ip: EP_IP, port: EP_PORT },
    tcpSport: 10001,
    ...opts,
  });
}

testProp(
  'the mix is seeded, its frames verify, fit their limits and keep the Ethernet header in the first page',
  [fc.integer(), fc.boolean(), fc.constantFrom(1500, 9000)],
  (t, seed, gso, mtu) => {
    const run = (): string[] => {
      const m = mix(seed, { mtu });
      m.setGso(gso);
      m.start();
      const v = new FrameVerifier();
      const out: string[] = [];
      for (let i = 0; i < 300; i++) {
        const p = m.next(0);
        if (p === null) break;
        const b = new Uint8Array(p.len);
        p.writeTo(b, 0);
        t.true(p.len >= (b[ETH_HLEN + 9] === IPPROTO_UDP ? MIX_MIN_FRAME : ETH_ZLEN) && p.len <= m.maxFrameLen, `len ${p.len}`);
        t.true(p.pageOffset >= 0 && p.pageOffset <= 4096 - ETH_HLEN);
        if (p.gsoSize === 0) t.true(p.len <= ETH_HLEN + mtu, `non-GSO frame of ${p.len} bytes`);
        const verdict = v.verify(b, 0, b.length, p.csumBlank ? NETRXF_csum_blank : 0);
        t.true(verdict === RX_VERIFIED || verdict === RX_UNVERIFIED, v.error ?? '');
        out.push(`${p.len}/${p.pageOffset}/${get16(b, 12)}/${b[ETH_HLEN + 9]}`);
      }
      return out;
    };
    const a = run();
    t.deepEqual(run(), a, 'the same seed gives the same frames');
    t.true(a.length > 0);
  },
  { numRuns: 20 },
);

test('the mix sends every kind it is given, none it is not, and the TCP SYN first', (t) => {
  const m = mix(7);
  m.start();
  const first = m.next(0)!;
  const b = new Uint8Array(first.len);
  first.writeTo(b, 0);
  t.is(b[ETH_HLEN + 9], IPPROTO_TCP);
  t.is(b[ETH_HLEN + IPV4_HLEN + 13], TCPHDR_SYN);
  for (let i = 0; i < 2000; i++) m.next(0);
  t.true(m.stats.udpGuest > 0 && m.stats.udpUplink > 0 && m.stats.broadcast > 0);
  const quiet = mix(7, { weights: { guest: 0, broadcast: 0, tcp: 0 } });
  quiet.start();
  for (let i = 0; i < 500; i++) quiet.next(0);
  t.deepEqual(quiet.stats, { udpGuest: 0, udpUplink: 500 - quiet.stats.tcp, broadcast: 0, tcp: quiet.stats.tcp });
  t.is(quiet.stats.tcp, 1, 'only the SYN: no data before the SYN-ACK');
});

// ---- Mix settings (--mix) --------------------------------------------------------------------------------

test('mix settings: named weights, unnamed kinds weigh 0, fractions alone keep the mode\'s weights', (t) => {
  t.deepEqual(parseMixSettings('tcp=1'), { ok: true, value: { weights: { guest: 0, uplink: 0, broadcast: 0, tcp: 1 } } });
  t.deepEqual(parseMixSettings(' uplink = 2 , guest=0.5,small=1,mtu=0'), {
    ok: true,
    value: { weights: { guest: 0.5, uplink: 2, broadcast: 0, tcp: 0 }, smallFraction: 1, mtuFraction: 0 },
  });
  t.deepEqual(parseMixSettings('mtu=0.6'), { ok: true, value: { mtuFraction: 0.6 } });
  t.deepEqual(MIX_DEFAULT_WEIGHTS, { guest: 1, uplink: 1, broadcast: 0.1, tcp: 1 });
});

test('mix settings: errors are exact', (t) => {
  const keys = 'keys: guest, uplink, broadcast, tcp, small, mtu';
  const bad: [string, string][] = [
    ['tcp', `"tcp" is not key=value (${keys})`],
    ['udp=1', `unknown key "udp" (${keys})`],
    ['tcp=1,tcp=2', 'tcp is given twice'],
    ['tcp=-1', 'tcp must be a weight >= 0 but got "-1"'],
    ['tcp=x', 'tcp must be a weight >= 0 but got "x"'],
    ['tcp=', 'tcp must be a weight >= 0 but got ""'],
    ['tcp=Infinity', 'tcp must be a weight >= 0 but got "Infinity"'],
    ['guest=0,tcp=0', 'at least one weight must be positive'],
    ['small=1.5', 'small must be a fraction in [0, 1] but got "1.5"'],
    ['small=0.7,mtu=0.7', 'small + mtu must be at most 1 but got 0.7 + 0.7'],
    ['small=0.8', "small + mtu must be at most 1 but got 0.8 + 0.4 (mtu's default)"],
  ];
  for (const [text, msg] of bad) t.deepEqual(parseMixSettings(text), { ok: false, error: msg }, text);
});

const mixSettingsArb: fc.Arbitrary<MixSettings> = fc
  .record(
    {
      weights: fc.record({ guest: fc.double({ min: 0, max: 100, noNaN: true }), uplink: fc.double({ min: 0, max: 100, noNaN: true }), broadcast: fc.double({ min: 0, max: 100, noNaN: true }), tcp: fc.double({ min: 1e-3, max: 100, noNaN: true }) }),
      smallFraction: fc.double({ min: 0, max: 0.5, noNaN: true }),
      mtuFraction: fc.double({ min: 0, max: 0.5, noNaN: true }),
    },
    { requiredKeys: [] },
  )
  .map((s) => s as MixSettings);

testProp('mix settings: the canonical text reads back to the same settings', [mixSettingsArb], (t, s) => {
  const text = formatMixSettings(s);
  if (s.weights === undefined && s.smallFraction === undefined && s.mtuFraction === undefined) {
    t.is(text, '');
    return;
  }
  const back = parseMixSettings(text);
  t.true(back.ok, text);
  if (back.ok) t.deepEqual(back.value, JSON.parse(JSON.stringify(s)) as MixSettings, text);
});

test('the mix honours settings: uplink only, all 64 B; by destination and size as each frame is written', (t) => {
  const s = parseMixSettings('uplink=1,small=1,mtu=0');
  if (!s.ok) return t.fail(s.error);
  const m = mix(3, { ...s.value, tcpEndpoint: null });
  m.start();
  for (let i = 0; i < 300; i++) {
    const f = m.next(0)!;
    const b = new Uint8Array(f.len);
    f.writeTo(b, 0);
    t.is(readMac(b, 0), PEER_MAC);
    t.is(f.len, MIX_MIN_FRAME);
  }
  t.deepEqual(m.stats, { udpGuest: 0, udpUplink: 300, broadcast: 0, tcp: 0 });
});

