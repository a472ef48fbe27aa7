// The remote peer model (backend/tcp-peer.ts): cumulative ACKs over out-of-order arrivals, payload
// verification against the stream pattern, partial ACKs, loss, reordering, and its option checks.
import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { VirtualClock } from '../../shared/clock.js';
import { TCPHDR_ACK, TCPHDR_FIN, TCPHDR_SYN } from '../../shared/inet.js';
import { patternByte } from '../../shared/payload.js';
import { Random } from '../../shared/random.js';
import { PAGE_SIZE, bindForeignPage, getPage, newPage } from '../../backend/page.js';
import { rusty } from '../../backend/release.js';
import { SkbContext, kfreeSkb, skbAddFrag } from '../../backend/skbuff.js';
import { parseTcpFrame } from '../../backend/tcp.js';
import { TcpPeer, type TcpPeerOptions } from '../../backend/tcp-peer.js';
import { EP_IP, EP_MAC, PEER_IP, PEER_MAC, PEER_PORT, buildTcpFrame, linearSkb } from './tcp-rig.js';

const ISN = 0xffff_ff00; // the stream wraps the 32-bit sequence space after 255 bytes
const BASE = (ISN + 1) >>> 0;
const SPORT = 40000;
const RTT = 5;

interface Ack {
  seq: number;
  ack: number;
  flags: number;
  window: number;
  dport: number;
}

function setup(opts: Partial<TcpPeerOptions> = {}) {
  const clock = new VirtualClock();
  const acks: Ack[] = [];
  const peer = new TcpPeer({
    clock,
    random: new Random(42),
    mac: PEER_MAC,
    ip: PEER_IP,
    port: PEER_PORT,
    rttMs: RTT,
    deliver: (frame) => {
      const f = parseTcpFrame(frame, 0, frame.length);
      if (!f.ok) throw new Error(f.error);
      if (f.value.ethDst !== EP_MAC || f.value.daddr !== EP_IP) throw new Error('ACK to the wrong host');
      const t = f.value.tcp;
      acks.push({ seq: t.seq, ack: t.ack, flags: t.flags, window: t.window, dport: t.dport });
    },
    ...opts,
  });
  const frame = (seq: number, len: number, flags = TCPHDR_ACK, pos?: number): Uint8Array =>
    buildTcpFrame({ srcMac: EP_MAC, dstMac: PEER_MAC, saddr: EP_IP, daddr: PEER_IP, sport: SPORT, dport: PEER_PORT, seq, flags, payloadLen: len, pos: pos ?? ((seq - BASE) | 0) });
  const send = (seq: number, len: number, flags = TCPHDR_ACK, pos?: number): void => {
    const b = frame(seq, len, flags, pos);
    peer.receive(b, b.length);
  };
  /** Moves time by one RTT and returns the ACKs delivered. */
  const flush = (ms = RTT): Ack[] => {
    clock.advance(ms);
    peer.poll(clock.now());
    return acks.splice(0);
  };
  return { clock, peer, send, frame, flush, acks };
}

test('SYN: a SYN-ACK acknowledging isn + 1 arrives one RTT later, not before', (t) => {
  const { peer, send, flush } = setup();
  send(ISN, 0, TCPHDR_SYN);
  t.deepEqual(flush(RTT - 1), []);
  const [a] = flush(1);
  t.is(a!.flags, TCPHDR_SYN | TCPHDR_ACK);
  t.is(a!.ack, BASE);
  t.is(a!.window, 0xffff);
  t.is(a!.dport, SPORT);
  t.deepEqual(peer.stream(SPORT), { stream: SPORT, isn: ISN, bytes: 0, corruptSegments: 0, finished: false });
});

testProp(
  'cumulative ACKs over any arrival order: each ACK is the longest received prefix; duplicates change nothing',
  [fc.array(fc.integer({ min: 1, max: 400 }), { minLength: 1, maxLength: 30 }), fc.infiniteStream(fc.nat()), fc.nat()],
  (t, sizes, picks, extra) => {
    const { peer, send, flush } = setup();
    send(ISN, 0, TCPHDR_SYN);
    flush();
    const segs: [number, number][] = [];
    let pos = 0;
    for (const n of sizes) {
      segs.push([pos, n]);
      pos += n;
    }
    // Arrival order: a shuffle, plus a few repeats.
    const order = [...segs];
    const it = picks[Symbol.iterator]();
    for (let i = order.length - 1; i > 0; i--) {
      const j = it.next().value! % (i + 1);
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    for (let k = 0; k < extra % 4; k++) order.splice(it.next().value! % (order.length + 1), 0, segs[it.next().value! % segs.length]!);
    const have = new Uint8Array(pos);
    for (const [p, n] of order) {
      send((BASE + p) >>> 0, n);
      have.fill(1, p, p + n);
      let prefix = 0;
      while (prefix < pos && have[prefix] === 1) prefix++;
      const acks = flush();
      t.is(acks.length, 1);
      t.is(acks[0]!.ack, (BASE + prefix) >>> 0);
    }
    t.is(peer.stream(SPORT)!.bytes, pos);
    t.is(peer.stats.dataBytes, pos);
    t.is(peer.stats.corruptSegments, 0);
  },
);

test('a payload byte from the wrong stream position is reported with its position and values', (t) => {
  const { peer, send, flush } = setup();
  send(ISN, 0, TCPHDR_SYN);
  flush();
  send(BASE, 100);
  send((BASE + 100) >>> 0, 50, TCPHDR_ACK, 101); // bytes of positions 101.. where 100.. belongs
  t.is(peer.stats.corruptSegments, 1);
  t.is(peer.stream(SPORT)!.corruptSegments, 1);
  const want = patternByte(SPORT, 100).toString(16);
  const got = patternByte(SPORT, 101).toString(16);
  t.is(peer.firstError, `stream ${SPORT} payload is corrupt at position 100: expected 0x${want} but got 0x${got}`);
});

test('a partial ACK covers a strict prefix; the rest is ACKed after the delayed-ACK time', (t) => {
  const { peer, send, flush } = setup({ partialAck: 1, delayedAckMs: 40 });
  send(ISN, 0, TCPHDR_SYN);
  flush();
  send(BASE, 1000);
  const [a] = flush();
  const part = (a!.ack - BASE) >>> 0;
  t.true(part >= 1 && part <= 999, `prefix ${part}`);
  t.is(peer.stats.partialAcks, 1);
  // The segment arrived at 5; the withheld ACK is sent at 5 + 40 and reaches the endpoint one RTT later.
  t.is(peer.nextDeadline(), 45);
  t.deepEqual(flush(35), []);
  const [b] = flush(RTT);
  t.is(b!.ack, (BASE + 1000) >>> 0);
});

test('FIN: once in order it is ACKed (one sequence number) and the stream is finished', (t) => {
  const { peer, send, flush } = setup();
  send(ISN, 0, TCPHDR_SYN);
  flush();
  send((BASE + 10) >>> 0, 5, TCPHDR_ACK | TCPHDR_FIN); // early FIN
  t.is(flush()[0]!.ack, BASE);
  t.false(peer.stream(SPORT)!.finished);
  send(BASE, 10);
  t.is(flush()[0]!.ack, (BASE + 16) >>> 0);
  t.true(peer.stream(SPORT)!.finished);
});

test('loss 1 drops every frame; ACK loss 1 drops every ACK', (t) => {
  const a = setup({ loss: 1 });
  a.send(ISN, 0, TCPHDR_SYN);
  t.deepEqual(a.flush(), []);
  t.deepEqual([a.peer.stats.frames, a.peer.stats.lost], [1, 1]);
  const b = setup({ ackLoss: 1 });
  b.send(ISN, 0, TCPHDR_SYN);
  t.deepEqual(b.flush(), []);
  t.is(b.peer.stats.acksLost, 1);
  t.is(b.peer.stream(SPORT)!.isn, ISN);
});

test('reordering holds a frame back for reorderDelayMs before the peer processes it', (t) => {
  const { peer, send, flush, clock } = setup({ reorder: 1, reorderDelayMs: 3 });
  send(ISN, 0, TCPHDR_SYN);
  t.is(peer.nextDeadline(), clock.now() + 3);
  t.is(peer.stream(SPORT), undefined);
  t.deepEqual(flush(3), []);
  t.is(peer.stream(SPORT)?.isn, ISN);
  t.deepEqual(flush(RTT).map((a) => a.flags), [TCPHDR_SYN | TCPHDR_ACK]);
  t.is(peer.stats.reordered, 1);
});

test('a segment before any SYN is unknown; a frame for another host is bad', (t) => {
  const { peer, send, flush } = setup();
  send(BASE, 10);
  t.is(peer.stats.unknownStream, 1);
  const other = buildTcpFrame({ srcMac: EP_MAC, dstMac: 0x02_00_00_00_00_aa, saddr: EP_IP, daddr: PEER_IP, sport: SPORT, dport: PEER_PORT, seq: 0, flags: TCPHDR_SYN });
  peer.receive(other, other.length);
  t.is(peer.stats.badFrames, 1);
  t.is(peer.firstError, 'frame is not for this peer: expected 02:00:00:00:00:fe 192.0.2.1:9000 but got 02:00:00:00:00:aa 192.0.2.1:9000');
  t.deepEqual(flush(), []);
});

test('wire() reads a nonlinear skb through skb_copy_bits and keeps no reference', (t) => {
  const { peer, send, flush, frame } = setup();
  send(ISN, 0, TCPHDR_SYN);
  flush();
  const ctx = new SkbContext({ design: rusty });
  const bytes = frame(BASE, 3000);
  const skb = linearSkb(ctx, bytes.subarray(0, 100));
  const page = newPage(ctx);
  const mem = new Uint8Array(PAGE_SIZE);
  mem.set(bytes.subarray(100), 7);
  bindForeignPage(page, mem, { domid: 1, gref: 1 });
  getPage(ctx, page);
  skbAddFrag(skb, page, 7, bytes.length - 100);
  peer.wire(skb);
  t.is(skb.users, 1);
  t.is(page.count, 2);
  t.is(peer.stream(SPORT)!.bytes, 3000);
  t.is(peer.stats.corruptSegments, 0);
  kfreeSkb(skb);
});

const badOptions: { opts: Partial<TcpPeerOptions>; error: string }[] = [
  { opts: { loss: 2 }, error: 'peer loss must be a probability in [0, 1], got 2' },
  { opts: { partialAck: -0.1 }, error: 'peer partialAck must be a probability in [0, 1], got -0.1' },
  { opts: { rttMs: -1 }, error: 'peer rttMs must be a finite number >= 0, got -1' },
  { opts: { window: 0 }, error: 'peer window must be an integer in [1, 65535], got 0' },
  { opts: { window: 65536 }, error: 'peer window must be an integer in [1, 65535], got 65536' },
];

for (const c of badOptions) {
  test(`TcpPeer options: ${c.error}`, (t) => {
    t.throws(() => setup(c.opts), { instanceOf: RangeError, message: c.error });
  });
}
