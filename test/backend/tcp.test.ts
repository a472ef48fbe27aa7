// The local TCP endpoint (backend/tcp.ts): guest streams relayed to the remote peer out of guest pages.
// The rig (tcp-rig.ts) checks after every operation that a page handed back to its guest is not reachable
// from any live skb (endpoint queues, NIC ring and tap, LAN tap), and the peer checks every payload byte.
import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { ETH_HLEN, ETH_P_ARP } from '../../shared/ether.js';
import { IPV4_HLEN, TCP_HLEN, TCPHDR_ACK, TCPHDR_FIN, TCPHDR_RST, TCPHDR_SYN, csumFold, csumPartial } from '../../shared/inet.js';
import { findPatternMismatch } from '../../shared/payload.js';
import { Random } from '../../shared/random.js';
import { VirtualClock } from '../../shared/clock.js';
import { naive, rusty } from '../../backend/release.js';
import { type SkBuff, SkbContext, kfreeSkb, skbCopyBits } from '../../backend/skbuff.js';
import { TcpEndpoint, type TcpEndpointOptions, parseTcpFrame, seqAfter, seqBefore } from '../../backend/tcp.js';
import {
  EP_IP,
  EP_MAC,
  EP_PORT,
  FakeNic,
  PEER_IP,
  PEER_MAC,
  PEER_PORT,
  Rig,
  type RigOptions,
  buildTcpFrame,
  linearSkb,
  walkPages,
} from './tcp-rig.js';

const MSS = 1460;

/** Every guarantee of a finished run: bytes in order and verified, grants back exactly once and never early, nothing leaked. */
function assertClean(t: import('ava').ExecutionContext, rig: Rig, ok: boolean, label = ''): void {
  const ctx = `${label} seed ${rig.random.seed}`;
  if (!ok) rig.teardown();
  t.true(ok, `${ctx}: did not finish (now ${rig.clock.now()}, streams ${JSON.stringify(rig.streams.map((s) => `${s.state}:${s.acked}/${s.sent}`))})`);
  t.deepEqual(rig.grants.early, [], `${ctx}: grants returned while reachable`);
  t.deepEqual(rig.grants.double, [], `${ctx}: grants returned twice`);
  t.is(rig.leaks(), 0, `${ctx}: grants never returned`);
  t.is(rig.peer.stats.corruptSegments, 0, `${ctx}: ${rig.peer.firstError}`);
  t.is(rig.peer.stats.badFrames, 0, `${ctx}: ${rig.peer.firstError}`);
  for (const s of rig.streams) {
    const p = rig.peer.stream(s.id);
    t.is(p?.bytes, s.total, `${ctx}: stream ${s.id} bytes at the peer`);
    t.true(p?.finished, `${ctx}: stream ${s.id} FIN at the peer`);
  }
  t.is(rig.ep.stats.bytesAcked, rig.streams.length * (rig.streams[0]?.total ?? 0), ctx);
  t.deepEqual(rig.balance(), { skbs: 0, shinfos: 0, pageRefs: 0, localPages: 0 }, `${ctx}: skbuff stats unbalanced`);
  t.deepEqual(rig.nic.oversize, [], ctx);
  t.deepEqual(rig.nic.tapCorrupt, [], `${ctx}: a tapped uplink frame changed while held`);
  t.deepEqual(rig.lanTapCorrupt, [], `${ctx}: a tapped guest frame changed while held`);
  t.is(rig.duplicateVisit, null, ctx);
  t.is(rig.ep.stats.allocFailures, 0, ctx);
  let held = 0;
  rig.ep.forEachSkb(() => held++);
  t.is(held, 0, `${ctx}: the endpoint still holds skbs`);
}

// ---------------------------------------------------------------------------------------------------------
// Parsing peer data

const good = {
  srcMac: 0x02_00_00_00_10_00,
  dstMac: EP_MAC,
  saddr: 0x0a00_000a,
  daddr: EP_IP,
  sport: 40000,
  dport: EP_PORT,
  seq: 1000,
  ack: 7,
  flags: TCPHDR_ACK,
  payloadLen: 30,
};

/** Sets the IPv4 header checksum again after a mutation. */
function fixIpCsum(b: Uint8Array): void {
  b[ETH_HLEN + 10] = 0;
  b[ETH_HLEN + 11] = 0;
  const c = csumFold(csumPartial(b, ETH_HLEN, IPV4_HLEN, 0));
  b[ETH_HLEN + 10] = c >>> 8;
  b[ETH_HLEN + 11] = c & 0xff;
}

const parseCases: { name: string; mutate: (b: Uint8Array) => Uint8Array; error: string }[] = [
  { name: 'short frame', mutate: (b) => b.subarray(0, 10), error: 'frame is too short: expected >= 14 bytes but got 10' },
  {
    name: 'ARP',
    mutate: (b) => {
      b[12] = ETH_P_ARP >>> 8;
      b[13] = ETH_P_ARP & 0xff;
      return b;
    },
    error: 'ethertype is not IPv4: expected 0x800 but got 0x806',
  },
  {
    name: 'UDP',
    mutate: (b) => {
      b[ETH_HLEN + 9] = 17;
      fixIpCsum(b);
      return b;
    },
    error: 'IPv4 protocol is not TCP: expected 6 but got 17',
  },
  {
    name: 'IPv4 fragment',
    mutate: (b) => {
      b[ETH_HLEN + 6] = 0x20; // MF
      fixIpCsum(b);
      return b;
    },
    error: 'IPv4 fragment is not supported: expected frag_off 0 but got 0x2000',
  },
  {
    name: 'tot_len leaves 10 bytes of TCP',
    mutate: (b) => {
      b[ETH_HLEN + 2] = 0;
      b[ETH_HLEN + 3] = IPV4_HLEN + 10;
      fixIpCsum(b);
      return b;
    },
    error: 'TCP header is truncated: expected >= 20 bytes but got 10',
  },
  {
    name: 'doff below 5',
    mutate: (b) => {
      b[ETH_HLEN + IPV4_HLEN + 12] = 4 << 4;
      return b;
    },
    error: 'TCP doff is corrupt: expected 20 <= x <= 50 but got 16',
  },
  {
    name: 'doff past the segment',
    mutate: (b) => {
      b[ETH_HLEN + IPV4_HLEN + 12] = 15 << 4;
      return b;
    },
    error: 'TCP doff is corrupt: expected 20 <= x <= 50 but got 60',
  },
  {
    name: 'IPv4 checksum',
    mutate: (b) => {
      b[ETH_HLEN + 8] ^= 1;
      return b;
    },
    error: 'IPv4 header checksum is wrong',
  },
];

for (const c of parseCases) {
  test(`parseTcpFrame rejects: ${c.name}`, (t) => {
    const b = c.mutate(buildTcpFrame(good));
    const r = parseTcpFrame(b, 0, b.length);
    t.deepEqual(r, { ok: false, error: c.error });
  });

  test(`the endpoint counts and drops a malformed frame: ${c.name}`, (t) => {
    const rig = new Rig({ seed: 1, design: rusty, streams: 0, bytesPerStream: 0, tso: false });
    const b = c.mutate(buildTcpFrame(good));
    rig.ep.startXmit(linearSkb(rig.ctx, b));
    const s = rig.ep.stats;
    if (c.name === 'ARP' || c.name === 'UDP') {
      t.is(s.notForUs, 1); // not ours to judge: another protocol
    } else {
      t.is(s.badFrames, 1);
      t.is(rig.ep.lastError, c.error);
    }
    t.is(rig.lanInbox.length, 0);
    t.deepEqual(rig.balance(), { skbs: 0, shinfos: 0, pageRefs: 0, localPages: 0 });
  });
}

test('parseTcpFrame reads every field of a good frame and excludes Ethernet padding', (t) => {
  const b = new Uint8Array(200);
  b.set(buildTcpFrame(good));
  const r = parseTcpFrame(b, 0, b.length);
  if (!r.ok) return t.fail(r.error);
  const f = r.value;
  t.deepEqual(
    [f.ethDst, f.ethSrc, f.saddr, f.daddr, f.tcp.sport, f.tcp.dport, f.tcp.seq, f.tcp.ack, f.tcp.flags, f.tcp.doff, f.tcp.window],
    [good.dstMac, good.srcMac, good.saddr, good.daddr, good.sport, good.dport, good.seq, good.ack, good.flags, TCP_HLEN, 0xffff],
  );
  t.is(f.payloadOff, ETH_HLEN + IPV4_HLEN + TCP_HLEN);
  t.is(f.payloadLen, 30);
  t.is(findPatternMismatch(b, f.payloadOff, f.payloadLen, good.sport, 0), -1);
});

testProp('seqBefore/seqAfter order sequence numbers across the 2^32 wrap', [fc.nat({ max: 0xffffffff }), fc.integer({ min: 1, max: 0x7fffffff })], (t, a, d) => {
  const b = (a + d) >>> 0;
  t.true(seqBefore(a, b));
  t.true(seqAfter(b, a));
  t.false(seqBefore(b, a));
  t.false(seqBefore(a, a));
});

// ---------------------------------------------------------------------------------------------------------
// Options

const badOptions: { opts: Partial<TcpEndpointOptions>; error: string }[] = [
  { opts: { port: 0 }, error: 'tcp port must be an integer in [1, 65535], got 0' },
  { opts: { peerPort: 70000 }, error: 'tcp peerPort must be an integer in [1, 65535], got 70000' },
  { opts: { rcvBuf: 70000 }, error: 'tcp rcvBuf must be an integer in [1, 65535], got 70000' },
  { opts: { rcvBuf: 10000, sndBuf: 5000 }, error: 'tcp sndBuf must be an integer in [10000, 1073741824], got 5000' },
  { opts: { rtoMinMs: 100, rtoInitMs: 50 }, error: 'tcp rtoInitMs must be an integer in [100, 120000], got 50' },
  { opts: { initCwnd: 0 }, error: 'tcp initCwnd must be an integer in [1, 65536], got 0' },
];

for (const c of badOptions) {
  test(`TcpEndpoint options: ${c.error}`, (t) => {
    const ctx = new SkbContext({ design: rusty });
    const clock = new VirtualClock();
    const random = new Random(1);
    const nic = new FakeNic(clock, random, false, 0, 0, 0, () => {});
    t.throws(
      () =>
        new TcpEndpoint({ ctx, clock, random, mac: EP_MAC, ip: EP_IP, port: EP_PORT, uplink: nic, peerMac: PEER_MAC, peerIp: PEER_IP, peerPort: PEER_PORT, ...c.opts }),
      { instanceOf: RangeError, message: c.error },
    );
  });
}

// ---------------------------------------------------------------------------------------------------------
// The relay, end to end

testProp(
  'every relayed byte reaches the peer in order; every grant comes back once, never while reachable; nothing leaks',
  [
    fc.record({
      seed: fc.integer({ min: 1, max: 0x7fffffff }),
      tso: fc.boolean(),
      loss: fc.constantFrom(0, 0.05),
      partialAck: fc.constantFrom(0, 0.3),
      reorder: fc.constantFrom(0, 0.05),
      ackLoss: fc.constantFrom(0, 0.05),
      tapProb: fc.constantFrom(0, 0.3),
      lanTapProb: fc.constantFrom(0, 0.3),
      streams: fc.integer({ min: 1, max: 3 }),
      bytesPerStream: fc.integer({ min: 1, max: 80_000 }),
      maxFrame: fc.constantFrom(1460, 9000, 30000),
    }),
  ],
  (t, o) => {
    const rig = new Rig({ ...o, design: rusty, completionMs: 0.5 });
    const ok = rig.run();
    assertClean(t, rig, ok);
    // The queues stay bounded: receive buffer plus send buffer per connection.
    t.true(rig.maxHeld <= o.streams * (65535 + 262144), `held ${rig.maxHeld}`);
    if (!o.tso) t.true(rig.nic.payloads.every((n) => n <= MSS));
  },
  { numRuns: 25 },
);

function lossRun(t: import('ava').ExecutionContext, loss: number): Rig {
  const rig = new Rig({ seed: 0x5eed, design: rusty, streams: 3, bytesPerStream: 150_000, tso: false, loss, maxFrame: 9000, tapProb: 0.2, lanTapProb: 0.2 });
  assertClean(t, rig, rig.run(), `loss ${loss}`);
  return rig;
}

test('loss 0: the relay completes without a single retransmission', (t) => {
  const s = lossRun(t, 0).ep.stats;
  t.deepEqual([s.retransmits, s.rtoEvents, s.fastRetransmits], [0, 0, 0]);
});

test('loss 0.05 (seeded): lost segments are retransmitted (fast retransmit and RTO), counted, and all data arrives', (t) => {
  const rig = lossRun(t, 0.05);
  const s = rig.ep.stats;
  t.true(rig.peer.stats.lost > 0);
  t.true(s.fastRetransmits > 0, 'fast retransmits');
  t.true(s.rtoEvents > 0, 'RTOs');
  t.true(s.retransmits >= s.fastRetransmits);
  t.true(s.dupAcks >= 3 * s.fastRetransmits);
});

test('the naive design (no orig references) is caught: grants come back while the retransmit queue still reads them', (t) => {
  const rig = new Rig({ seed: 0x5eed, design: naive, streams: 2, bytesPerStream: 60_000, tso: false, maxFrame: 9000, partialAck: 0.3, loss: 0.05 });
  if (!rig.run()) rig.teardown();
  t.true(rig.grants.early.length > 0);
  // Retransmissions read pages the guest had already poisoned: the peer's pattern check sees it too.
  t.true(rig.peer.stats.corruptSegments > 0, 'the poisoned pages were sent (the second detector)');
});

/** Records (stream offset, payload) of every data frame the NIC puts on the wire, per stream. */
function recordSegments(rig: Rig): Map<number, [number, number][]> {
  const segs = new Map<number, [number, number][]>();
  const iss = new Map<number, number>();
  const nicWire = rig.nic;
  const hdr = new Uint8Array(ETH_HLEN + IPV4_HLEN + TCP_HLEN);
  const orig = nicWire.startXmit.bind(nicWire);
  nicWire.startXmit = (skb: SkBuff) => {
    skbCopyBits(skb, 0, hdr, 0, hdr.length);
    const f = parseTcpFrame(hdr, 0, skb.len); // only the header bytes are read
    if (!f.ok) throw new Error(f.error);
    {
      const tcp = f.value.tcp;
      if ((tcp.flags & TCPHDR_SYN) !== 0) iss.set(tcp.sport, tcp.seq);
      const plen = skb.len - hdr.length;
      if (plen > 0) {
        const list = segs.get(tcp.sport) ?? [];
        list.push([(tcp.seq - iss.get(tcp.sport)! - 1) >>> 0, plen]);
        segs.set(tcp.sport, list);
      }
    }
    orig(skb);
  };
  return segs;
}

/** Segments cut only at MSS multiples from a guest frame's start and never spanning two guest frames. */
function assertCutAtMss(t: import('ava').ExecutionContext, rig: Rig, segs: Map<number, [number, number][]>, maxPayload: number): void {
  for (const s of rig.streams) {
    const frames = rig.frameLog.filter((f) => f.stream === s.id);
    for (const [off, len] of segs.get(s.id) ?? []) {
      const fr = frames.find((f) => f.pos <= off && off < f.pos + f.len);
      if (fr === undefined) return t.fail(`segment at ${off} is in no guest frame`);
      t.true(off + len <= fr.pos + fr.len, `segment [${off}, +${len}) spans two guest frames`);
      t.is((off - fr.pos) % MSS, 0, `segment at ${off} is not cut at an MSS multiple of the frame at ${fr.pos}`);
      t.true(len <= maxPayload, `segment of ${len} bytes`);
    }
  }
}

test('TSO off: every segment is MSS-sized (the last piece of each guest skb may be shorter)', (t) => {
  const rig = new Rig({ seed: 7, design: rusty, streams: 2, bytesPerStream: 100_000, tso: false, maxFrame: 9000, sizes: 'max' });
  const segs = recordSegments(rig);
  assertClean(t, rig, rig.run());
  t.true(segs.size === 2);
  // Without loss each guest frame of L bytes leaves as floor(L / MSS) full segments plus the remainder.
  const expected = rig.frameLog.flatMap((f) => [...Array<number>(Math.floor(f.len / MSS)).fill(MSS), ...(f.len % MSS > 0 ? [f.len % MSS] : [])]);
  t.deepEqual([...rig.nic.payloads].sort((a, b) => a - b), expected.sort((a, b) => a - b));
  assertCutAtMss(t, rig, segs, MSS);
  t.is(rig.ep.stats.gsoSent, 0);
});

test('TSO on: GSO skbs of up to 64 KiB with gso_size = MSS, cut at MSS multiples', (t) => {
  const rig = new Rig({ seed: 8, design: rusty, streams: 2, bytesPerStream: 200_000, tso: true, maxFrame: 30000, sizes: 'max', loss: 0.02 });
  const segs = recordSegments(rig);
  assertClean(t, rig, rig.run());
  t.true(segs.size === 2);
  t.true(rig.ep.stats.gsoSent > 0);
  t.true(rig.nic.payloads.some((n) => n > MSS));
  assertCutAtMss(t, rig, segs, 0xffff - IPV4_HLEN - TCP_HLEN);
});

// ---------------------------------------------------------------------------------------------------------
// Loss recovery, one mechanism at a time

/** Drops, on the wire, the first `times` transmissions of the data segment starting at stream offset `at`. */
function dropAt(rig: Rig, at: (total: number) => number, times = 1): number[] {
  let iss = 0;
  let dropped = 0;
  const when: number[] = [];
  rig.nic.dropIf = (_i, seq, plen, flags) => {
    if ((flags & TCPHDR_SYN) !== 0) iss = seq;
    if (plen === 0 || ((seq - iss - 1) >>> 0) !== at(rig.streams[0]!.total)) return false;
    when.push(rig.clock.now());
    return dropped++ < times;
  };
  return when;
}

test('one lost segment mid-stream: three duplicate ACKs trigger exactly one fast retransmit, no RTO', (t) => {
  const rig = new Rig({ seed: 3, design: rusty, streams: 1, bytesPerStream: 60_000, tso: false, sizes: 'max' });
  const when = dropAt(rig, () => 14 * MSS);
  assertClean(t, rig, rig.run());
  const s = rig.ep.stats;
  t.is(when.length, 2, 'sent twice');
  t.deepEqual([s.fastRetransmits, s.rtoEvents, s.retransmits], [1, 0, 1]);
  t.true(s.dupAcks >= 3);
});

test('a lost tail segment (no duplicate ACKs follow) is recovered by the RTO, which backs off by doubling', (t) => {
  const rig = new Rig({ seed: 4, design: rusty, streams: 1, bytesPerStream: 30 * MSS, tso: false, sizes: 'max' });
  const when = dropAt(rig, (total) => total - MSS, 2);
  assertClean(t, rig, rig.run());
  const s = rig.ep.stats;
  t.is(when.length, 3, 'sent three times');
  t.deepEqual([s.rtoEvents, s.fastRetransmits, s.retransmits], [2, 0, 2]);
  // RTT is 1 ms, so RFC 6298 gives rto = rtoMin (20 ms in the rig); the second timeout waits twice as long.
  t.true(when[1]! - when[0]! >= 20);
  t.is(when[2]! - when[1]!, 40);
});

test('a lost SYN to the peer is retransmitted after the initial RTO', (t) => {
  const rig = new Rig({ seed: 5, design: rusty, streams: 1, bytesPerStream: 5000, tso: false });
  const syns: number[] = [];
  rig.nic.dropIf = (_i, _seq, _plen, flags) => {
    if ((flags & TCPHDR_SYN) === 0) return false;
    syns.push(rig.clock.now());
    return syns.length === 1;
  };
  assertClean(t, rig, rig.run());
  t.is(syns.length, 2);
  t.is(syns[1]! - syns[0]!, 100); // rtoInitMs in the rig
  t.is(rig.ep.stats.rtoEvents, 1);
});

test('a partial ACK trims the head skb: fully ACKed pages leave it, the rest stay, no grant comes back yet', (t) => {
  const rig = new Rig({
    seed: 6,
    design: rusty,
    streams: 1,
    bytesPerStream: 30000,
    tso: true,
    maxFrame: 30000,
    sizes: 'max',
    partialAck: 1,
    peer: { delayedAckMs: 1000 },
    endpoint: { rtoInitMs: 5000, rtoMinMs: 5000 },
  });
  t.true(rig.runUntil(() => rig.ep.stats.partialAcks > 0));
  const s = rig.ep.stats;
  const acked = s.bytesAcked;
  t.true(acked > 0 && acked < 30000);
  let held = 0;
  const reachable = new Set<import('../../backend/page.js').Page>();
  rig.ep.forEachSkb((skb) => {
    held += skb.len;
    walkPages(skb, reachable);
  });
  t.is(held, 30000 - acked, 'the queue holds exactly the unACKed bytes');
  const [frame] = rig.frameLog;
  for (const f of frame!.frags) {
    if (f.to <= acked) t.false(reachable.has(f.page), `page of [${f.from}, ${f.to}) is fully ACKed at ${acked}`);
    else t.true(reachable.has(f.page), `page of [${f.from}, ${f.to}) still has unACKed bytes at ${acked}`);
  }
  t.is(rig.grants.released, 0, 'the shinfo destructor fires only when the whole skb is gone');
  assertClean(t, rig, rig.run());
});

test('taps holding every frame across RTOs: shared skbs are copied or uncloned before any change, and no tapped frame changes', (t) => {
  // Clones outlive retransmissions, so tcp_transmit_skb must pskb_copy, and tcp_fragment, tcp_trim_head and the
  // GSO fields must unclone first; the guest frames' heads stay shared with the LAN tap while they are queued.
  const rig = new Rig({
    seed: 15,
    design: rusty,
    streams: 2,
    bytesPerStream: 120_000,
    tso: true,
    maxFrame: 9000,
    loss: 0.05,
    partialAck: 0.3,
    tapProb: 1,
    tapHoldMs: 200,
    lanTapProb: 1,
    lanTapHoldMs: 200,
  });
  assertClean(t, rig, rig.run());
  const s = rig.ep.stats;
  t.true(s.pskbCopies > 0, 'retransmissions of still-cloned skbs');
  t.true(s.uncloned > 0, 'received skbs uncloned before queueing');
  t.true(s.fragments > 0 && s.partialAcks > 0 && s.rtoEvents > 0);
});

// ---------------------------------------------------------------------------------------------------------
// Flow control and coalescing

test('a slow peer closes the guest window: queues stay within rcvBuf + sndBuf and nothing is dropped', (t) => {
  const rig = new Rig({ seed: 9, design: rusty, streams: 1, bytesPerStream: 400_000, tso: false, maxFrame: 9000, rttMs: 30, endpoint: { sndBuf: 65535 } });
  assertClean(t, rig, rig.run());
  t.true(rig.maxHeld <= 65535 + 65535, `held ${rig.maxHeld}`);
  t.true(rig.maxHeld > 65535, 'the receive queue was used');
  t.true(rig.minWindow < MSS, `window went down to ${rig.minWindow}`);
  t.is(rig.ep.stats.beyondWindow, 0);
});

test('coalescing small writes into the unsent tail: rusty refuses to move foreign frags, and the refusals are counted', (t) => {
  const run = (design: typeof rusty): Rig => {
    // A peer that never answers keeps the data unsent behind the SYN, where tcp_sendpage coalesces.
    const rig = new Rig({ seed: 10, design, streams: 1, bytesPerStream: 20_000, tso: false, maxFrame: 600, loss: 1 });
    t.true(rig.runUntil(() => rig.ep.stats.bytesRelayed === 20_000));
    return rig;
  };
  const r = run(rusty);
  t.true(r.ctx.stats.coalesceRefused > 0, 'refused by the design');
  t.true(r.ep.stats.coalesceRefused >= r.ctx.stats.coalesceRefused);
  t.is(r.ctx.stats.coalesceMoved, 0);
  t.is(r.ep.stats.coalesced, r.ctx.stats.coalesceCopied);
  r.teardown();
  t.deepEqual(r.grants.early, []);
  t.is(r.leaks(), 0);
  t.deepEqual(r.balance(), { skbs: 0, shinfos: 0, pageRefs: 0, localPages: 0 });
  // naive lets frags move: its attempts fail only where Linux's do (the head holds netback's copied bytes).
  const n = run(naive);
  t.is(n.ctx.stats.coalesceRefused, 0);
  t.is(n.ep.stats.coalesceRefused, r.ep.stats.coalesceRefused);
});

// ---------------------------------------------------------------------------------------------------------
// The guest-side protocol, frame by frame

/** A rig without streams and a helper that feeds frames from guest 10.0.0.10:40000. */
function direct(endpoint: Partial<TcpEndpointOptions> = {}): { rig: Rig; send: (f: Partial<Parameters<typeof buildTcpFrame>[0]>) => void; lan: () => ReturnType<typeof readLan> } {
  const rig = new Rig({ seed: 11, design: rusty, streams: 0, bytesPerStream: 0, tso: false, endpoint });
  const send = (f: Partial<Parameters<typeof buildTcpFrame>[0]>): void => {
    rig.ep.startXmit(linearSkb(rig.ctx, buildTcpFrame({ ...good, payloadLen: 0, ...f })));
    rig.ep.poll(rig.clock.now());
  };
  return { rig, send, lan: () => readLan(rig) };
}

/** The frames the endpoint sent to guests since the last call, parsed. */
function readLan(rig: Rig): { seq: number; ack: number; flags: number; window: number; dport: number }[] {
  const out = [];
  for (const skb of rig.lanInbox.splice(0)) {
    const b = new Uint8Array(skb.len);
    skbCopyBits(skb, 0, b, 0, skb.len);
    const f = parseTcpFrame(b, 0, b.length);
    if (!f.ok) throw new Error(f.error);
    out.push({ seq: f.value.tcp.seq, ack: f.value.tcp.ack, flags: f.value.tcp.flags, window: f.value.tcp.window, dport: f.value.tcp.dport });
    kfreeSkb(skb);
  }
  return out;
}

test('a segment for no connection is answered with RST (RFC 793 rules for SEQ and ACK)', (t) => {
  const { rig, send, lan } = direct();
  send({ flags: TCPHDR_ACK, seq: 5000, ack: 77, payloadLen: 10 });
  t.deepEqual(lan(), [{ seq: 77, ack: 0, flags: TCPHDR_RST, window: 0, dport: 40000 }]);
  send({ flags: TCPHDR_FIN, seq: 5000, payloadLen: 10 });
  t.deepEqual(lan(), [{ seq: 0, ack: 5011, flags: TCPHDR_RST | TCPHDR_ACK, window: 0, dport: 40000 }]);
  t.is(rig.ep.stats.noConnection, 2);
  t.is(rig.ep.stats.rstsSent, 2);
});

test('handshake: SYN gets SYN-ACK and opens the outbound connection with a SYN to the peer; data then flows', (t) => {
  const { rig, send, lan } = direct();
  send({ flags: TCPHDR_SYN, seq: 999 });
  const [synAck] = lan();
  t.is(synAck!.flags, TCPHDR_SYN | TCPHDR_ACK);
  t.is(synAck!.ack, 1000);
  t.is(synAck!.window, 0xffff);
  t.is(rig.nic.frames, 1, 'SYN to the peer');
  // A retransmitted SYN gets the same SYN-ACK again; the handshake's ACK establishes the connection.
  send({ flags: TCPHDR_SYN, seq: 999 });
  t.deepEqual(lan(), [synAck]);
  send({ flags: TCPHDR_ACK, seq: 1000, ack: synAck!.seq + 1, payloadLen: 100 });
  const [ack] = lan();
  t.deepEqual([ack!.flags, ack!.ack, ack!.seq], [TCPHDR_ACK, 1100, (synAck!.seq + 1) >>> 0]);
  t.is(rig.ep.stats.bytesIn, 100);
  t.is(rig.ep.connections, 1);
});

test('a second guest using the same source port (the peer stream id) is refused with RST', (t) => {
  const { rig, send, lan } = direct();
  send({ flags: TCPHDR_SYN, seq: 1 });
  lan();
  send({ flags: TCPHDR_SYN, seq: 50, saddr: 0x0a00_000b, srcMac: 0x02_00_00_00_10_01 });
  t.deepEqual(lan(), [{ seq: 0, ack: 51, flags: TCPHDR_RST | TCPHDR_ACK, window: 0, dport: 40000 }]);
  t.is(rig.ep.stats.refused, 1);
  t.is(rig.ep.connections, 1);
});

test('in-order only: an early segment is dropped with a duplicate ACK; an overlapping one keeps only its new bytes', (t) => {
  const { rig, send, lan } = direct();
  send({ flags: TCPHDR_SYN, seq: 999 });
  const [synAck] = lan();
  const ack = (synAck!.seq + 1) >>> 0;
  send({ seq: 1000, ack, payloadLen: 100, pos: 0 });
  send({ seq: 1200, ack, payloadLen: 100, pos: 200 }); // early
  send({ seq: 1050, ack, payloadLen: 100, pos: 50 }); // overlaps [50, 100)
  send({ seq: 1000, ack, payloadLen: 50, pos: 0 }); // entirely old
  const acks = lan().map((a) => a.ack);
  t.deepEqual(acks, [1100, 1100, 1150, 1150]);
  t.deepEqual([rig.ep.stats.outOfOrder, rig.ep.stats.duplicateSegments, rig.ep.stats.bytesIn], [1, 1, 150]);
  // What is queued is exactly the stream's bytes [0, 150): the relayed skbs carry no headers.
  const bytes: number[] = [];
  rig.ep.forEachSkb((skb) => {
    const b = new Uint8Array(skb.len);
    skbCopyBits(skb, 0, b, 0, skb.len);
    bytes.push(...b);
  });
  t.is(bytes.length, 150);
  t.is(findPatternMismatch(Uint8Array.from(bytes), 0, 150, good.sport, 0), -1);
});

test('data beyond the advertised window is trimmed off and counted', (t) => {
  const { rig, send, lan } = direct({ rcvBuf: 2000, sndBuf: 2000 });
  send({ flags: TCPHDR_SYN, seq: 999 });
  const [synAck] = lan();
  t.is(synAck!.window, 2000);
  send({ seq: 1000, ack: synAck!.seq + 1, payloadLen: 3000 });
  t.is(rig.ep.stats.bytesIn, 2000);
  t.is(rig.ep.stats.beyondWindow, 1000);
  t.is(lan()[0]!.ack, 3000);
});

test('a guest FIN is answered with FIN-ACK; a guest RST aborts and frees everything', (t) => {
  const { rig, send, lan } = direct();
  send({ flags: TCPHDR_SYN, seq: 999 });
  const [synAck] = lan();
  const ack = (synAck!.seq + 1) >>> 0;
  send({ seq: 1000, ack, payloadLen: 500, flags: TCPHDR_ACK | TCPHDR_FIN });
  const [finAck] = lan();
  t.deepEqual([finAck!.flags, finAck!.ack], [TCPHDR_ACK | TCPHDR_FIN, 1501]);
  send({ seq: 1501, ack, flags: TCPHDR_RST });
  t.is(rig.ep.connections, 0);
  t.is(rig.ep.stats.connectionsAborted, 1);
  rig.teardown();
  t.deepEqual(rig.balance(), { skbs: 0, shinfos: 0, pageRefs: 0, localPages: 0 });
});

test('frames for another MAC, address or port are not ours', (t) => {
  const { rig, send, lan } = direct();
  send({ flags: TCPHDR_SYN, dstMac: 0x02_00_00_00_00_99 });
  send({ flags: TCPHDR_SYN, daddr: 0x0a00_0063 });
  send({ flags: TCPHDR_SYN, dport: 22 });
  t.is(rig.ep.stats.notForUs, 3);
  t.deepEqual(lan(), []);
  t.deepEqual(rig.balance(), { skbs: 0, shinfos: 0, pageRefs: 0, localPages: 0 });
});

test('close() mid-transfer frees every queue; each grant comes back once and never early', (t) => {
  const rig = new Rig({ seed: 12, design: rusty, streams: 2, bytesPerStream: 100_000, tso: false, maxFrame: 9000, loss: 0.05, tapProb: 0.3 } satisfies RigOptions);
  t.true(rig.runUntil(() => rig.ep.stats.bytesAcked > 50_000));
  let held = 0;
  rig.ep.forEachSkb(() => held++);
  t.true(held > 0);
  rig.teardown();
  held = 0;
  rig.ep.forEachSkb(() => held++);
  t.is(held, 0);
  t.deepEqual(rig.grants.early, []);
  t.deepEqual(rig.grants.double, []);
  t.is(rig.leaks(), 0);
  t.deepEqual(rig.balance(), { skbs: 0, shinfos: 0, pageRefs: 0, localPages: 0 });
});

test('a late ACK for a closed connection is counted as stale, not as bad', (t) => {
  const { rig } = direct();
  rig.ep.uplinkReceive(buildTcpFrame({ srcMac: PEER_MAC, dstMac: EP_MAC, saddr: PEER_IP, daddr: EP_IP, sport: PEER_PORT, dport: 40000, seq: 1, ack: 2, flags: TCPHDR_ACK }));
  rig.ep.uplinkReceive(buildTcpFrame({ srcMac: PEER_MAC, dstMac: EP_MAC, saddr: PEER_IP, daddr: EP_IP, sport: 1234, dport: 40000, seq: 1, ack: 2, flags: TCPHDR_ACK }));
  t.deepEqual([rig.ep.stats.uplinkStale, rig.ep.stats.uplinkBad], [1, 1]);
});
