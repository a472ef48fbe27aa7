import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { VirtualClock } from '../../shared/clock.js';
import { ETH_BROADCAST } from '../../shared/ether.js';
import { Random } from '../../shared/random.js';
import { MemoryPcapSink, PcapWriter } from '../../backend/pcap.js';
import { rusty } from '../../backend/release.js';
import { CHECKSUM_PARTIAL, SKB_GSO_DODGY, SKB_GSO_TCPV4, type SkBuff, kfreeSkb } from '../../backend/skbuff.js';
import { SoftirqClock, Stack, type StackOptions } from '../../backend/stack.js';
import { FakeGuest, HoldingPort, MAC_A, MAC_B, MAC_C, assertBalanced, collect, guestSkb, newCtx, reachableForeignPages, tcp4Frame, udpFrame } from './fixtures/stack-frames.js';

/** A vif that either keeps what it is given (a guest slow to post RX buffers) or copies it out at once and frees it. */
class Vif extends HoldingPort {
  keep = true;
  override startXmit(skb: SkBuff): void {
    if (this.keep) super.startXmit(skb);
    else kfreeSkb(skb);
  }
}

class Host extends HoldingPort {
  polls: number[] = [];
  poll(now: number): void {
    this.polls.push(now);
  }
}

function build(over: Partial<StackOptions> = {}): { stack: Stack; clock: VirtualClock; guest: FakeGuest; sink: MemoryPcapSink } {
  const ctx = newCtx(rusty);
  const clock = new VirtualClock();
  const sink = new MemoryPcapSink();
  const stack = new Stack({
    ctx,
    clock,
    random: new Random(1),
    nic: { features: { sg: true, tso: false }, completionDelayMs: 1 },
    tap: { holdMs: 10, pcap: new PcapWriter(sink), scope: 'all' },
    ...over,
  });
  return { stack, clock, guest: new FakeGuest(ctx), sink };
}

function skbs(stack: Stack): SkBuff[] {
  return collect(stack);
}

test('a flooded frame is held by every part; forEachSkb visits each skb once; the grant comes back after the last', (t) => {
  const { stack, clock, guest, sink } = build();
  const [vif0, vif1] = [new HoldingPort('vif0'), new HoldingPort('vif1')];
  const host = new Host('tcp0');
  const in0 = stack.attachPort(vif0);
  stack.attachPort(vif1);
  stack.addHolder(vif0);
  stack.addHolder(vif1);
  stack.addHost(host);
  const frame = udpFrame({ src: MAC_A, dst: MAC_C, payload: 1400 });
  in0(guestSkb(stack.ctx, guest, frame, 42, [1000, 400]));
  // vif1, the host and the NIC each hold one; the tap holds a clone of each transmission.
  const held = skbs(stack);
  t.is(held.length, 6);
  t.is(new Set(held).size, 6, 'no skb visited twice');
  t.deepEqual(new Set(held), new Set([...collect(vif1), ...collect(host), ...collect(stack.nic), ...collect(stack.tap!)]));
  t.is(stack.tap!.holding, 3);
  t.is(stack.stats.bridge.flooded, 1);
  const roots = (): SkBuff[] => skbs(stack);
  for (const s of vif1.got.splice(0)) kfreeSkb(s);
  for (const s of host.got.splice(0)) kfreeSkb(s);
  t.is(guest.flush(roots), 0);
  clock.advance(1);
  stack.poll(clock.now());
  t.is(stack.nic.inFlight, 0);
  t.deepEqual(host.polls, [1], 'hosts are polled with the stack');
  t.is(guest.flush(roots), 0, 'the tap still holds clones');
  t.is(stack.nextDeadline(), 10);
  clock.advance(9);
  stack.poll(clock.now());
  t.is(guest.flush(roots), 2);
  stack.close();
  t.true(sink.closed);
  t.is(stack.stats.tap!.written, 3);
  assertBalanced(t, stack.ctx, guest);
});

test('scope uplink: the tap sees only what the NIC transmits; attachPort/detachPort and holders', (t) => {
  const { stack, guest } = build({ tap: { holdMs: 0, scope: 'uplink' } });
  const [vif0, vif1] = [new HoldingPort('vif0'), new HoldingPort('vif1')];
  const in0 = stack.attachPort(vif0);
  const in1 = stack.attachPort(vif1);
  t.throws(() => stack.attachPort(vif0), { message: 'stack: vif0 is already attached' });
  in0(guestSkb(stack.ctx, guest, udpFrame({ src: MAC_A, dst: ETH_BROADCAST, payload: 100 }), 42, [4096]));
  t.is(stack.tap!.holding, 1, 'only the NIC transmission');
  t.is(vif1.got.length, 1);
  in1(guestSkb(stack.ctx, guest, udpFrame({ src: MAC_B, dst: MAC_A, payload: 100 }), 42, [4096]));
  t.is(vif0.got.length, 1, 'learned unicast');
  t.is(stack.stats.bridge.forwarded, 1);
  stack.addHolder(vif0);
  t.throws(() => stack.addHolder(vif0), { message: 'stack: holder already registered' });
  t.true(skbs(stack).includes(vif0.got[0]!));
  stack.removeHolder(vif0);
  t.false(skbs(stack).includes(vif0.got[0]!));
  t.throws(() => stack.removeHolder(vif0), { message: 'stack: holder is not registered' });
  stack.detachPort(vif0);
  t.is(stack.bridge.fdbLookup(MAC_A), null, 'its fdb entries went with it');
  t.throws(() => stack.detachPort(vif0), { message: 'stack: vif0 is not attached' });
  stack.input(guestSkb(stack.ctx, guest, udpFrame({ src: MAC_A, payload: 10 }), 42, [4096]), vif0);
  t.is(stack.stats.bridge.droppedNotPort, 1);
  for (const s of [...vif0.got.splice(0), ...vif1.got.splice(0)]) kfreeSkb(s);
  stack.close();
  guest.flush(() => []);
  assertBalanced(t, stack.ctx, guest);
});

test('the NIC can stay off the bridge (the TCP endpoint then uses it directly)', (t) => {
  const { stack, guest } = build({ nic: { features: { sg: true, tso: true }, onBridge: false }, tap: null });
  const [vif0, vif1] = [new HoldingPort('vif0'), new HoldingPort('vif1')];
  const in0 = stack.attachPort(vif0);
  stack.attachPort(vif1);
  in0(guestSkb(stack.ctx, guest, udpFrame({ src: MAC_A, dst: ETH_BROADCAST, payload: 100 }), 42));
  t.is(stack.nic.stats.xmits, 0);
  t.is(vif1.got.length, 1);
  t.is(stack.stats.tap, null);
  kfreeSkb(vif1.got.pop()!);
  stack.close();
  guest.flush(() => []);
  assertBalanced(t, stack.ctx, guest);
});

// Random traffic through the whole stack: guests on 3 vifs send UDP frames and TCP GSO frames to each other and
// to unknown MACs (so to the NIC), receivers keep or free what they got, time moves, the NIC stalls. After every
// step the fake guest checks each grant it got back against everything the stack still holds; at the end the
// stack is closed and every grant must have come back exactly once, with every counter balanced.
type Step =
  | { k: 'send'; from: number; to: number; gso: boolean; payload: number; frags: number; keep: boolean }
  | { k: 'free'; vif: number; which: number }
  | { k: 'time'; ms: number }
  | { k: 'stall'; ms: number };

testProp(
  'grants return exactly once and never while any part of the stack still holds their pages',
  [
    fc.boolean(),
    fc.boolean(),
    fc.integer({ min: 0, max: 20 }),
    fc.constantFrom<'uplink' | 'all'>('uplink', 'all'),
    fc.array(
      fc.oneof(
        {
          weight: 5,
          arbitrary: fc.record({
            k: fc.constant('send' as const),
            from: fc.nat(2),
            to: fc.nat(4),
            gso: fc.boolean(),
            payload: fc.integer({ min: 1, max: 20000 }),
            frags: fc.integer({ min: 1, max: 17 }),
            keep: fc.boolean(),
          }),
        },
        { weight: 3, arbitrary: fc.record({ k: fc.constant('free' as const), vif: fc.nat(2), which: fc.nat(10) }) },
        { weight: 3, arbitrary: fc.record({ k: fc.constant('time' as const), ms: fc.integer({ min: 0, max: 15 }) }) },
        { weight: 1, arbitrary: fc.record({ k: fc.constant('stall' as const), ms: fc.integer({ min: 1, max: 30 }) }) },
      ),
      { maxLength: 60 },
    ),
  ],
  (t, sg, tso, hold, scope, steps: Step[]) => {
    const { stack, clock, guest } = build({
      nic: { features: { sg, tso }, completionDelayMs: 2, ringSize: 8, txQueueLen: 8 },
      tap: { holdMs: hold, capacity: 16, scope },
    });
    const vifs = [0, 1, 2].map((i) => new Vif(`vif${i}`));
    const inputs = vifs.map((v) => stack.attachPort(v));
    for (const v of vifs) stack.addHolder(v);
    const macs = [MAC_A, MAC_B, MAC_C, 0x0216_3e00_00ee, ETH_BROADCAST];
    const roots = (): SkBuff[] => skbs(stack);
    for (const s of steps) {
      if (s.k === 'send') {
        const frame = s.gso
          ? tcp4Frame({ src: macs[s.from], dst: macs[s.to], payload: s.payload })
          : udpFrame({ src: macs[s.from], dst: macs[s.to], payload: Math.min(s.payload, 1472) });
        const linear = Math.min(frame.length, s.gso ? 128 : 42);
        const rest = frame.length - linear;
        const n = Math.max(Math.ceil(rest / 4096), Math.min(s.frags, 17));
        const skb = guestSkb(stack.ctx, guest, frame, linear, new Array(n).fill(Math.ceil(rest / n)));
        if (s.gso) {
          skb.shinfo.gsoSize = 1448;
          skb.shinfo.gsoType = SKB_GSO_TCPV4 | SKB_GSO_DODGY;
          skb.ipSummed = CHECKSUM_PARTIAL;
          skb.csumStart = skb.data + 34;
          skb.csumOffset = 16;
        }
        for (const v of vifs) v.keep = s.keep;
        inputs[s.from]!(skb);
      } else if (s.k === 'free') {
        const got = vifs[s.vif]!.got;
        if (got.length > 0) kfreeSkb(got.splice(s.which % got.length, 1)[0]!);
      } else if (s.k === 'time') {
        clock.advance(s.ms);
        stack.poll(clock.now());
      } else {
        stack.nic.stall(clock.now() + s.ms);
      }
      const held = skbs(stack);
      if (new Set(held).size !== held.length) return void t.fail('forEachSkb visited an skb twice');
      guest.flush(roots);
      if (guest.problems.length > 0) return void t.fail(guest.problems.join('; '));
      // Whatever the stack holds is still mapped (the converse of an early return).
      for (const p of reachableForeignPages(held)) if (!guest.mapped.has(p)) return void t.fail(`page ${p.id} reachable but not mapped`);
    }
    for (const v of vifs) for (const s of v.got.splice(0)) kfreeSkb(s);
    stack.close();
    guest.flush(roots);
    assertBalanced(t, stack.ctx, guest);
  },
);

test('SoftirqClock: the base clock outside a batch, the batch\'s first reading inside it (nested batches too)', (t) => {
  const base = new VirtualClock();
  const c = new SoftirqClock(base);
  base.advance(2);
  t.is(c.now(), 2);
  c.enter();
  base.advance(1);
  t.is(c.now(), 2, 'pinned');
  c.enter(50);
  t.is(c.now(), 2, 'an inner batch keeps the outer time');
  c.exit();
  t.is(c.now(), 2);
  c.exit();
  t.is(c.now(), 3, 'unpinned');
  c.enter(7);
  t.is(c.now(), 7, 'a batch may be given its time');
  c.exit();
  t.throws(() => c.exit(), { message: 'SoftirqClock: exit without enter' });
  let fired = 0;
  c.schedule(1, () => void fired++);
  base.advance(1);
  t.is(fired, 1, 'timers are the base clock\'s');
});
