import test from 'ava';
import { RIG_REMOTE, rigConfig } from '../../frontend/adversary-rig.js';
import { fc, testProp } from '@fast-check/ava';
import {
  Dom0Backend,
  MAX_NOTES,
  SoftirqLoop,
  UplinkHost,
  type BackendConfig,
  type SoftirqWaiter,
  type SoftirqWork,
} from '../../backend/loop.js';
import { rusty } from '../../backend/release.js';
import { SkbContext, allocSkb, kfreeSkb, skbPut, type SkBuff } from '../../backend/skbuff.js';
import { VirtualClock } from '../../shared/clock.js';
import { ETH_HLEN, ETH_P_ARP, ETH_P_IP, writeEthHeader } from '../../shared/ether.js';
import type { WaitResult } from '../../shared/evtchn.js';
import { IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, UDP_HLEN, ipv4, writeIpv4Header, writeUdpHeader } from '../../shared/inet.js';
import { writeTaggedPayload } from '../../shared/payload.js';

const REMOTE = RIG_REMOTE;
const GUEST = { mac: 0x00_16_3e_00_00_01, ip: ipv4(10, 0, 0, 1) };

function frameSkb(ctx: SkbContext, bytes: Uint8Array): SkBuff {
  const skb = allocSkb(ctx, bytes.length);
  const off = skbPut(skb, bytes.length);
  skb.head.set(bytes, off);
  skb.macHeader = skb.data;
  return skb;
}

function udpFrame(payloadLen: number, stream: number, pos: number, proto = IPPROTO_UDP, daddr = REMOTE.ip): Uint8Array {
  const f = new Uint8Array(ETH_HLEN + IPV4_HLEN + UDP_HLEN + payloadLen);
  writeEthHeader(f, 0, REMOTE.mac, GUEST.mac, ETH_P_IP);
  writeIpv4Header(f, ETH_HLEN, { totalLen: IPV4_HLEN + UDP_HLEN + payloadLen, id: 1, ttl: 64, proto, saddr: GUEST.ip, daddr });
  writeUdpHeader(f, ETH_HLEN + IPV4_HLEN, 40000, 9, UDP_HLEN + payloadLen);
  writeTaggedPayload(f, ETH_HLEN + IPV4_HLEN + UDP_HLEN, payloadLen, stream, pos);
  return f;
}

testProp(
  'uplink host: a UDP payload checks out unless one byte of its pattern changed',
  [fc.integer({ min: 9, max: 3000 }), fc.integer({ min: 0, max: 0xffff }), fc.nat(), fc.option(fc.nat(), { nil: null })],
  (t, len, stream, pos, flipAt) => {
    const ctx = new SkbContext({ design: rusty });
    const host = new UplinkHost(null, REMOTE);
    const f = udpFrame(len, stream, pos);
    // The bytes after the 8-byte tag are the checkable pattern.
    if (flipAt !== null) f[ETH_HLEN + IPV4_HLEN + UDP_HLEN + 8 + (flipAt % (len - 8))]! ^= 0x5a;
    const skb = frameSkb(ctx, f);
    host.wire(skb);
    kfreeSkb(skb);
    t.is(host.stats.udpVerified, flipAt === null ? 1 : 0);
    t.is(host.stats.udpCorrupt, flipAt === null ? 0 : 1);
    if (flipAt !== null) t.regex(host.stats.firstError!, /^payload is corrupt at byte \d+: expected 0x[0-9a-f]+ but got 0x[0-9a-f]+$/);
  },
);

test('uplink host: TCP to the remote goes to the peer; everything else is counted as other', (t) => {
  const ctx = new SkbContext({ design: rusty });
  const seen: number[] = [];
  const host = new UplinkHost({ wire: (skb) => void seen.push(skb.len) }, REMOTE);
  const tcp = udpFrame(40, 1, 0, IPPROTO_TCP);
  const tcpElsewhere = udpFrame(40, 1, 0, IPPROTO_TCP, ipv4(198, 51, 100, 7));
  const arp = new Uint8Array(60);
  writeEthHeader(arp, 0, REMOTE.mac, GUEST.mac, ETH_P_ARP);
  const short = udpFrame(40, 1, 0).subarray(0, ETH_HLEN + 10);
  for (const f of [tcp, tcpElsewhere, arp, short]) {
    const skb = frameSkb(ctx, f);
    host.wire(skb);
    kfreeSkb(skb);
  }
  t.deepEqual(seen, [tcp.length]);
  t.deepEqual({ ...host.stats }, { frames: 4, tcp: 1, udpVerified: 0, udpCorrupt: 0, udpCorruptHostile: 0, other: 3, firstError: null });
});

// A work script and a waiter over virtual time: the loop's decisions are visible in what the waiter was asked.
class ScriptedWork implements SoftirqWork {
  rounds = 0;
  constructor(
    private readonly script: number[],
    readonly deadline: () => number,
  ) {}
  round(): number {
    return this.script[this.rounds++] ?? 0;
  }
  nextDeadline(): number {
    return this.deadline();
  }
}

class VirtualWaiter implements SoftirqWaiter {
  readonly waits: number[] = [];
  constructor(
    private readonly clock: VirtualClock,
    private readonly onWait: (n: number) => WaitResult,
  ) {}
  async waitAsync(timeoutMs: number): Promise<WaitResult> {
    this.waits.push(timeoutMs);
    const r = this.onWait(this.waits.length);
    if (r === 'timed-out') this.clock.advance(timeoutMs);
    return r;
  }
}

test('softirq loop: busy rounds run back to back, idle rounds spin, then it sleeps until the deadline or maxSleepMs', async (t) => {
  const clock = new VirtualClock();
  let loop: SoftirqLoop | null = null;
  const work = new ScriptedWork([3, 1, 0, 0, 0, 2, 0, 0, 0], () => clock.now() + 4);
  const waiter = new VirtualWaiter(clock, (n) => {
    if (n === 2) void loop!.stop();
    return n === 1 ? 'woken' : 'timed-out';
  });
  loop = new SoftirqLoop(work, waiter, clock, { maxSleepMs: 10, idleRounds: 2 });
  await loop.start();
  // rounds 1-2 busy, 3-4 idle spins, 5th idle -> sleep (woken), round 6 busy, 7-8 spin, 9th idle -> sleep, stop.
  t.is(work.rounds, 9);
  t.deepEqual(waiter.waits, [4, 4]);
  t.is(loop.stats.busyRounds, 3);
  t.is(loop.stats.sleeps, 2);
  t.is(loop.stats.wakeups, 1);
});

test('softirq loop: sleeps are capped at maxSleepMs and a due deadline yields instead of sleeping', async (t) => {
  const clock = new VirtualClock();
  let deadline = Infinity;
  let loop: SoftirqLoop | null = null;
  const work = new ScriptedWork([], () => deadline);
  const waiter = new VirtualWaiter(clock, (n) => {
    if (n === 1) deadline = clock.now(); // due now: the next idle round must not sleep
    return 'timed-out';
  });
  let idleRoundsAfterDue = 0;
  const origRound = work.round.bind(work);
  work.round = () => {
    if (deadline !== Infinity && ++idleRoundsAfterDue === 3) void loop!.stop();
    return origRound();
  };
  loop = new SoftirqLoop(work, waiter, clock, { maxSleepMs: 7, idleRounds: 0 });
  await loop.start();
  t.deepEqual(waiter.waits, [7]);
  t.true(loop.stats.yields >= 1);
});

test('softirq loop: an exception in the work rejects the loop', async (t) => {
  const clock = new VirtualClock();
  const work: SoftirqWork = {
    round: () => {
      throw new Error('bug');
    },
    nextDeadline: () => Infinity,
  };
  await t.throwsAsync(new SoftirqLoop(work, new VirtualWaiter(clock, () => 'timed-out'), clock).start(), { message: 'bug' });
});

// The adversary rig's backend configuration (Linux's timeouts, rusty, zero-copy), with this file's seed.
function config(over: Partial<BackendConfig> = {}): BackendConfig {
  return rigConfig({ seed: 7, ...over });
}

test('dom0: the remote host announces itself on the uplink port, so guests\' uplink frames are forwarded, not flooded', (t) => {
  const clock = new VirtualClock();
  const dom0 = new Dom0Backend(config(), clock);
  t.is(dom0.stack.bridge.fdbLookup(REMOTE.mac), null);
  dom0.round(clock.now());
  t.is(dom0.stack.bridge.fdbLookup(REMOTE.mac), dom0.stack.nic);
  t.is(dom0.stack.bridge.stats.droppedNoPort, 1, 'the announcement itself goes nowhere');
  t.true(dom0.quiescent());
  t.is(dom0.liveSkbs(), 0);
  t.is(dom0.nextDeadline(), clock.now() + 60_000);
});

test('dom0: notes keep distinct messages up to MAX_NOTES, and netback\'s per-gref teardown warnings become one line per vif', (t) => {
  const dom0 = new Dom0Backend(config(), new VirtualClock());
  dom0.note('vif3.0: Too many multicast addresses');
  dom0.note('vif3.0: Too many multicast addresses');
  // Two warning rounds a second apart over the same three grants, as netback's teardown prints them, and a fourth.
  for (let round = 0; round < 2; round++) for (const [idx, gref] of [[0, 280], [4, 764], [0x1e, 344]] as const) dom0.note(`vif4.0: Page still granted! Index: ${idx.toString(16)} gref ${gref}`);
  dom0.note('vif4.0: Page still granted! Index: 2b gref 619');
  for (let i = 0; i < 10; i++) dom0.note(`vif5.0: Page still granted! Index: ${i} gref ${100 + i}`);
  for (let i = 0; i < MAX_NOTES + 3; i++) dom0.note(`probe ${i} failed`);
  const notes = dom0.report().notes;
  t.deepEqual(notes.slice(0, 2), ['vif3.0: Too many multicast addresses', 'probe 0 failed']);
  t.true(notes.includes('vif4.0: teardown waited for 4 grants the stack still held ("Page still granted!" 7 times; grefs 280, 764, 344, 619)'), notes.join('\n'));
  t.true(notes.includes('vif5.0: teardown waited for 10 grants the stack still held ("Page still granted!" 10 times; grefs 100, 101, 102, 103, 104, 105, 106, 107, …)'), notes.join('\n'));
  t.true(notes.includes('(4 more messages not kept)'), notes.join('\n'));
  t.false(notes.some((n) => n.includes('Index:')), 'no raw per-gref line is kept');
});

test('dom0: an unknown release design is refused', (t) => {
  t.throws(() => new Dom0Backend(config({ design: 'magic' }), new VirtualClock()), { message: 'unknown release design: magic' });
});

test('dom0: a UDP frame from a guest port reaches the uplink host through bridge and NIC; the report counts it', (t) => {
  const clock = new VirtualClock();
  const dom0 = new Dom0Backend(config(), clock);
  dom0.round(clock.now());
  const port = { name: 'vif1.0', mtu: 1500, features: { sg: true, tso: true }, startXmit: (skb: SkBuff) => kfreeSkb(skb) };
  const input = dom0.stack.attachPort(port);
  input(frameSkb(dom0.ctx, udpFrame(1000, 3, 77)));
  t.false(dom0.quiescent(), 'the NIC holds the frame until its completion');
  clock.advance(1);
  dom0.round(clock.now());
  t.true(dom0.quiescent());
  const r = dom0.report();
  t.is(r.uplink.udpVerified, 1);
  t.is(r.corruptPayloads, 0);
  t.deepEqual(r.oracle, { mapped: 0, returned: 0, earlyReturns: 0, doubleReturns: 0, leaks: 0, violations: [] });
  dom0.close();
});

test('dom0: abortHolders frees what the NIC holds at the drain deadline and says so', (t) => {
  const clock = new VirtualClock();
  const dom0 = new Dom0Backend(config(), clock);
  dom0.round(clock.now());
  dom0.stack.nic.stall(Infinity);
  const input = dom0.stack.attachPort({ name: 'vif1.0', mtu: 1500, features: { sg: true, tso: true }, startXmit: (skb: SkBuff) => kfreeSkb(skb) });
  input(frameSkb(dom0.ctx, udpFrame(100, 3, 0)));
  input(frameSkb(dom0.ctx, udpFrame(100, 3, 92)));
  clock.advance(5);
  dom0.round(clock.now());
  t.is(dom0.liveSkbs(), 2);
  t.deepEqual(dom0.abortHolders(), ['NIC ring (2 skbs)']);
  t.true(dom0.quiescent());
  t.deepEqual(dom0.abortHolders(), []);
});
