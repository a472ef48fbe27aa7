import test from 'ava';
import { fc, testProp } from '@fast-check/ava';
import {
  FixedSource,
  GUEST_CONNECTED,
  GuestLoop,
  GuestStatsBlock,
  LATENCY_BUCKETS,
  PHASE_CLOSE,
  PHASE_CONNECT,
  PHASE_RUN,
  PHASE_STOP,
  STATS_COUNTERS,
  latencyQuantile,
  sTxPackets,
  type GuestDriver,
  type GuestWaiter,
} from '../../frontend/loop.js';
import { LatencyHistogram } from '../../frontend/netfront.js';
import { VirtualClock } from '../../shared/clock.js';
import { ETH_HLEN, parseEthHeader } from '../../shared/ether.js';
import type { WaitResult } from '../../shared/evtchn.js';
import { IPPROTO_TCP, IPPROTO_UDP, ipv4, parseIpv4Header } from '../../shared/inet.js';

test('phases only move forward; the state word is the guest\'s', (t) => {
  const b = GuestStatsBlock.create();
  t.is(b.phase, PHASE_CONNECT);
  b.setPhase(PHASE_STOP);
  b.setPhase(PHASE_RUN);
  t.is(b.phase, PHASE_STOP);
  b.setPhase(PHASE_CLOSE);
  t.is(b.phase, PHASE_CLOSE);
  b.setState(GUEST_CONNECTED);
  t.is(b.state, GUEST_CONNECTED);
  t.throws(() => new GuestStatsBlock(new SharedArrayBuffer(64)), { message: /^guest stats block must be at least \d+ bytes but got 64$/ });
});

test('a snapshot never sees a half-written publish', (t) => {
  const b = GuestStatsBlock.create();
  const c = new Float64Array(STATS_COUNTERS);
  const h = new Float64Array(LATENCY_BUCKETS);
  b.publish((counters) => counters.fill(1));
  // A reader that overlaps a writer (simulated by reading from inside the fill) must retry, not return torn data.
  let inside: boolean | null = null;
  b.publish((counters) => {
    counters[0] = 2;
    inside = b.snapshot(c, h, 5);
    counters.fill(2);
  });
  t.false(inside!);
  t.true(b.snapshot(c, h));
  t.true(c.every((x) => x === 2));
});

testProp('latency quantiles follow netfront\'s histogram and are NaN without samples', [fc.array(fc.double({ min: 0, max: 1e6, noNaN: true }), { maxLength: 200 })], (t, xs) => {
  const lh = new LatencyHistogram();
  for (const x of xs) lh.record(x);
  const counts = Float64Array.from(lh.counts);
  if (xs.length === 0) {
    t.is(latencyQuantile(counts, 0.5), NaN);
    return;
  }
  const p50 = latencyQuantile(counts, 0.5);
  const p99 = latencyQuantile(counts, 0.99);
  t.true(p50 <= p99);
  const sorted = [...xs].sort((a, b) => a - b);
  // The bucket holding the median sample bounds it from above, within one bucket width (~6%).
  const median = sorted[Math.ceil(0.5 * xs.length) - 1]!;
  t.true(p50 >= median && p50 <= Math.max(1, median * 1.07), `p50 ${p50} vs median ${median}`);
});

// A fake driver: transmits when allowed, returns grants after a few rounds, counts what it was asked.
class FakeDriver implements GuestDriver {
  transmitRounds = 0;
  silentRounds = 0;
  outstandingNow = 0;
  busy = true;
  onRound: (transmit: boolean) => void = () => {};
  round(_now: number, transmit: boolean): number {
    if (transmit) {
      this.transmitRounds++;
      this.outstandingNow++;
    } else {
      this.silentRounds++;
    }
    this.onRound(transmit);
    return transmit || this.busy ? 1 : 0;
  }
  nextDeadline(): number {
    return Infinity;
  }
  outstanding(): number {
    return this.outstandingNow;
  }
  publish(c: Float64Array): void {
    c[sTxPackets] = this.transmitRounds;
  }
}

class FakeWaiter implements GuestWaiter {
  waits = 0;
  kicks = 0;
  pending: ((r: WaitResult) => void) | null = null;
  onWait: () => void = () => {};
  constructor(private readonly clock: VirtualClock) {}
  waitAsync(timeoutMs: number): Promise<WaitResult> {
    this.waits++;
    this.onWait();
    return new Promise((resolve) => {
      this.pending = resolve;
      // Virtual time: the wait times out at once unless a test holds it.
      setImmediate(() => {
        if (this.pending === resolve) {
          this.pending = null;
          this.clock.advance(timeoutMs);
          resolve('timed-out');
        }
      });
    });
  }
  kickIfSleeping(): void {
    this.kicks++;
    const p = this.pending;
    this.pending = null;
    p?.('woken');
  }
}

test('the loop transmits only during PHASE_RUN and returns at PHASE_CLOSE', async (t) => {
  const clock = new VirtualClock();
  const block = GuestStatsBlock.create();
  const d = new FakeDriver();
  const seen: string[] = [];
  d.onRound = (transmit) => {
    const phase = block.phase;
    seen.push(`${phase}:${transmit ? 'tx' : '-'}`);
    if (seen.length === 3) block.setPhase(PHASE_RUN);
    if (seen.length === 6) block.setPhase(PHASE_STOP);
    if (seen.length === 9) block.setPhase(PHASE_CLOSE);
  };
  const loop = new GuestLoop(d, block, new FakeWaiter(clock), clock, { publishEveryMs: 0 });
  await loop.run();
  t.deepEqual(seen, ['0:-', '0:-', '0:-', '1:tx', '1:tx', '1:tx', '2:-', '2:-', '2:-']);
  const c = new Float64Array(STATS_COUNTERS);
  t.true(block.snapshot(c, new Float64Array(LATENCY_BUCKETS)));
  t.is(c[sTxPackets], 3, 'counters were published');
});

test('an idle loop sleeps on the event channel; a kick ends the sleep early and the stale wait is ended too', async (t) => {
  const clock = new VirtualClock();
  const block = GuestStatsBlock.create();
  const d = new FakeDriver();
  d.busy = false;
  const waiter = new FakeWaiter(clock);
  const loop = new GuestLoop(d, block, waiter, clock, { idleRounds: 1, maxSleepMs: 1000 });
  let held = false;
  waiter.onWait = () => {
    if (waiter.waits === 1) {
      held = true;
      // Hold this wait: only the kick can end it (no virtual timeout advance).
      queueMicrotask(() => {
        const p = waiter.pending;
        waiter.pending = null;
        setImmediate(() => {
          loop.kick();
          setImmediate(() => p?.('woken'));
        });
      });
    }
    if (waiter.waits === 3) block.setPhase(PHASE_CLOSE);
  };
  await loop.run();
  t.true(held);
  t.is(waiter.waits, 3);
  t.is(waiter.kicks, 1, 'the kicked wait was ended with kickIfSleeping');
  t.is(clock.now(), 2000, 'the kicked wait took no (virtual) time; the other two ran into their timeouts');
});

test('a kick before the loop sleeps makes the next sleep a no-op', async (t) => {
  const clock = new VirtualClock();
  const block = GuestStatsBlock.create();
  const d = new FakeDriver();
  d.busy = false;
  const waiter = new FakeWaiter(clock);
  const loop = new GuestLoop(d, block, waiter, clock, { idleRounds: 0 });
  loop.kick();
  d.onRound = () => {
    if (d.silentRounds === 2) block.setPhase(PHASE_CLOSE);
  };
  await loop.run();
  t.is(waiter.waits, 1, 'the first idle round consumed the kick instead of sleeping');
});

test('drainUntil stops once nothing is outstanding, or at the deadline', async (t) => {
  const clock = new VirtualClock();
  const block = GuestStatsBlock.create();
  const d = new FakeDriver();
  d.outstandingNow = 3;
  d.busy = false;
  d.onRound = (transmit) => {
    t.false(transmit);
    if (d.silentRounds % 2 === 1) d.outstandingNow--;
  };
  const loop = new GuestLoop(d, block, new FakeWaiter(clock), clock, { idleRounds: 0 });
  t.true(await loop.drainUntil(clock.now() + 1e9));
  t.is(d.outstandingNow, 0);
  d.outstandingNow = 2;
  d.onRound = () => {};
  const start = clock.now();
  t.false(await loop.drainUntil(start + 20));
  t.true(clock.now() >= start + 20);
});

const SELF = { mac: 0x00_16_3e_00_00_02, ip: ipv4(10, 0, 0, 2) };
const REMOTE = { mac: 0x02_00_00_00_00_01, ip: ipv4(192, 0, 2, 1) };

for (const [size, proto, gso] of [[64, IPPROTO_UDP, 0], [1500, IPPROTO_UDP, 0], [65535, IPPROTO_TCP, 1460]] as const) {
  test(`the bench's fixed source sends ${size}-byte frames (${proto === IPPROTO_UDP ? 'UDP' : 'TCP with a GSO extra'})`, (t) => {
    const src = new FixedSource(size, SELF, REMOTE, 1500, 2);
    const p = src.next(0);
    t.is(p.len, size);
    t.is(src.maxFrameLen, size);
    t.is(p.gsoSize, gso);
    const buf = new Uint8Array(size);
    p.writeTo(buf, 0);
    const eth = parseEthHeader(buf, 0, size);
    t.true(eth.ok && eth.value.dst === REMOTE.mac && eth.value.src === SELF.mac);
    const ip = parseIpv4Header(buf, ETH_HLEN, size - ETH_HLEN);
    t.true(ip.ok && ip.value.proto === proto && ip.value.totalLen === size - ETH_HLEN && ip.value.daddr === REMOTE.ip);
  });
}

test('the fixed source refuses sizes the wire format cannot carry', (t) => {
  t.throws(() => new FixedSource(49, SELF, REMOTE, 1500, 1), { message: 'fixed frame size must be an integer in [50, 65535] but got 49' });
  t.throws(() => new FixedSource(65536, SELF, REMOTE, 1500, 1), { message: 'fixed frame size must be an integer in [50, 65535] but got 65536' });
});
