import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { VirtualClock } from '../../shared/clock.js';
import { MemoryPcapSink, PcapWriter } from '../../backend/pcap.js';
import { rusty } from '../../backend/release.js';
import { kfreeSkb, type SkBuff } from '../../backend/skbuff.js';
import { Tap } from '../../backend/tap.js';
import { FakeGuest, HoldingPort, assertBalanced, collect, guestSkb, newCtx, reachableForeignPages, tcp4Frame, udpFrame } from './fixtures/stack-frames.js';

interface Rec {
  usecTotal: number;
  incl: number;
  orig: number;
  data: Uint8Array;
}

// An independent reader of the records (little-endian classic pcap).
function records(bytes: Uint8Array): Rec[] {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: Rec[] = [];
  for (let o = 24; o < bytes.length; ) {
    const incl = v.getUint32(o + 8, true);
    out.push({ usecTotal: v.getUint32(o, true) * 1e6 + v.getUint32(o + 4, true), incl, orig: v.getUint32(o + 12, true), data: bytes.slice(o + 16, o + 16 + incl) });
    o += 16 + incl;
  }
  return out;
}

test('holds a clone for the window, then writes it and frees it; the grant waits for the clone', (t) => {
  const ctx = newCtx(rusty);
  const clock = new VirtualClock();
  const sink = new MemoryPcapSink();
  const tap = new Tap({ clock, holdMs: 100, pcap: new PcapWriter(sink) });
  const guest = new FakeGuest(ctx);
  const frame = udpFrame({ payload: 3000 });
  clock.advance(5);
  const skb = guestSkb(ctx, guest, frame, 42, [2000, 1000]);
  const copied = ctx.stats.bytesCopied;
  tap.capture(skb);
  t.is(ctx.stats.bytesCopied, copied, 'a clone, not a copy');
  const held = collect(tap);
  t.is(held.length, 1);
  t.not(held[0], skb);
  t.is(held[0]!.shinfo, skb.shinfo, 'the clone shares the frame');
  // The device is done with the frame at once; the tap's clone still pins the guest pages.
  kfreeSkb(skb);
  const roots = (): SkBuff[] => collect(tap);
  t.is(guest.flush(roots), 0);
  t.is(reachableForeignPages(collect(tap)).size, 2);
  clock.advance(99.5);
  tap.poll(clock.now());
  t.is(tap.holding, 1, 'still held 99.5 ms later');
  t.is(tap.nextDeadline(), 105);
  clock.advance(0.5);
  tap.poll(clock.now());
  t.is(tap.holding, 0);
  t.is(guest.flush(roots), 2, 'returned once the clone is freed');
  tap.flush();
  const recs = records(sink.bytes());
  t.is(recs.length, 1);
  t.is(recs[0]!.usecTotal, 5000, 'timestamp = capture time');
  t.deepEqual(recs[0]!.data, frame);
  t.deepEqual(tap.stats, { captured: 1, written: 1, released: 1, dropped: 0 });
  assertBalanced(t, ctx, guest);
});

test('a GSO frame is written as the single large frame it is', (t) => {
  const ctx = newCtx(rusty);
  const clock = new VirtualClock();
  const sink = new MemoryPcapSink();
  const tap = new Tap({ clock, pcap: new PcapWriter(sink) });
  const guest = new FakeGuest(ctx);
  const frame = tcp4Frame({ payload: 65495 });
  const skb = guestSkb(ctx, guest, frame, 128, new Array(17).fill(4096));
  skb.shinfo.gsoSize = 1448;
  skb.shinfo.gsoType = 1;
  tap.capture(skb);
  kfreeSkb(skb);
  tap.poll(clock.now());
  tap.flush();
  const recs = records(sink.bytes());
  t.is(recs[0]!.orig, 65549);
  t.deepEqual(recs[0]!.data, frame);
  guest.flush(() => []);
  assertBalanced(t, ctx, guest);
});

test('a full tap drops the capture, never the frame; setHoldMs is the long-hold fault hook', (t) => {
  const ctx = newCtx(rusty);
  const clock = new VirtualClock();
  const tap = new Tap({ clock, capacity: 2 });
  const guest = new FakeGuest(ctx);
  const frames = [0, 1, 2].map(() => guestSkb(ctx, guest, udpFrame({ payload: 100 }), 42, [4096]));
  for (const f of frames) tap.capture(f);
  t.is(tap.stats.dropped, 1);
  t.is(tap.holding, 2);
  for (const f of frames) kfreeSkb(f);
  t.is(guest.flush(() => collect(tap)), 1, 'the frame the tap dropped went back');
  tap.setHoldMs(60_000);
  t.is(tap.hold, 60_000);
  clock.advance(59_999);
  tap.poll(clock.now());
  t.is(tap.holding, 2, 'a long hold pins the grants');
  t.is(guest.flush(() => collect(tap)), 0);
  clock.advance(1);
  tap.poll(clock.now());
  t.is(tap.holding, 0);
  t.is(guest.flush(() => collect(tap)), 2);
  t.throws(() => tap.setHoldMs(-1), { message: 'tap holdMs must be finite and >= 0, got -1' });
  t.throws(() => new Tap({ clock, capacity: 0 }), { message: 'tap capacity must be a positive integer, got 0' });
  assertBalanced(t, ctx, guest);
});

test('attach: the tapped device captures every frame it transmits, then the device gets it', (t) => {
  const ctx = newCtx(rusty);
  const clock = new VirtualClock();
  const sink = new MemoryPcapSink();
  const tap = new Tap({ clock, pcap: new PcapWriter(sink) });
  const port = new HoldingPort('vif1');
  const dev = tap.attach(port);
  t.is(dev.name, 'vif1');
  t.is(dev.mtu, 1500);
  t.deepEqual(dev.features, port.features);
  const guest = new FakeGuest(ctx);
  const frames = [udpFrame({ payload: 10 }), udpFrame({ payload: 2000 })];
  for (const f of frames) dev.startXmit(guestSkb(ctx, guest, f, 42, [4096]));
  t.is(port.got.length, 2);
  t.is(tap.holding, 2);
  for (const s of port.got.splice(0)) kfreeSkb(s);
  tap.poll(clock.now());
  tap.flush();
  t.deepEqual(records(sink.bytes()).map((r) => r.data), frames);
  guest.flush(() => []);
  assertBalanced(t, ctx, guest);
});

testProp(
  'each clone is released exactly when its hold ends, records in capture order with capture timestamps',
  [fc.integer({ min: 0, max: 50 }), fc.array(fc.tuple(fc.integer({ min: 0, max: 30 }), fc.boolean()), { minLength: 1, maxLength: 40 })],
  (t, hold, steps) => {
    const ctx = newCtx(rusty);
    const clock = new VirtualClock();
    const sink = new MemoryPcapSink();
    const tap = new Tap({ clock, holdMs: hold, pcap: new PcapWriter(sink) });
    const guest = new FakeGuest(ctx);
    const at: number[] = [];
    for (const [dt, cap] of steps) {
      clock.advance(dt);
      const now = clock.now();
      if (cap) {
        const skb = guestSkb(ctx, guest, udpFrame({ payload: 10 + at.length }), 42, [4096]);
        tap.capture(skb);
        kfreeSkb(skb);
        at.push(now);
      }
      tap.poll(now);
      t.is(tap.stats.released, at.filter((c) => c + hold <= now).length);
      t.is(tap.holding, at.length - tap.stats.released);
      guest.flush(() => collect(tap));
    }
    tap.flush();
    guest.flush(() => collect(tap));
    const recs = records(sink.bytes());
    t.deepEqual(recs.map((r) => r.usecTotal), at.map((c) => c * 1000));
    t.deepEqual(recs.map((r) => r.orig), at.map((_, i) => 52 + i));
    assertBalanced(t, ctx, guest);
  },
);
