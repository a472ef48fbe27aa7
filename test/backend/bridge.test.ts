import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { VirtualClock } from '../../shared/clock.js';
import { ETH_BROADCAST, writeMac } from '../../shared/ether.js';
import { BR_DEFAULT_AGEING_TIME_MS, Bridge } from '../../backend/bridge.js';
import { naive, rusty } from '../../backend/release.js';
import { kfreeSkb, skbGet, type SkBuff } from '../../backend/skbuff.js';
import {
  FakeGuest,
  HoldingPort,
  MAC_A,
  MAC_B,
  MAC_C,
  assertBalanced,
  collect,
  guestSkb,
  newCtx,
  reachableForeignPages,
  udpFrame,
} from './fixtures/stack-frames.js';

function freeAll(ports: HoldingPort[]): void {
  for (const p of ports) for (const s of p.got.splice(0)) kfreeSkb(s);
}

test('learns the source, forwards known unicast to its one port, floods unknown unicast', (t) => {
  const ctx = newCtx(rusty);
  const clock = new VirtualClock();
  const br = new Bridge({ clock });
  const [p0, p1, p2] = [new HoldingPort('vif1'), new HoldingPort('vif2'), new HoldingPort('eth0')];
  for (const p of [p0, p1, p2]) br.addPort(p);
  const guest = new FakeGuest(ctx);
  // A -> B: B unknown, flooded to p1 and p2; A learned on p0.
  br.input(guestSkb(ctx, guest, udpFrame({ src: MAC_A, dst: MAC_B, payload: 100 }), 42), p0);
  t.is(br.fdbLookup(MAC_A), p0);
  t.deepEqual([p0.got.length, p1.got.length, p2.got.length], [0, 1, 1]);
  // B -> A: A known on p0, only p0 gets it.
  br.input(guestSkb(ctx, guest, udpFrame({ src: MAC_B, dst: MAC_A, payload: 10 }), 52), p1);
  t.deepEqual([p0.got.length, p1.got.length, p2.got.length], [1, 1, 1]);
  t.is(br.fdbLookup(MAC_B), p1);
  t.is(br.stats.forwarded, 1);
  t.is(br.stats.flooded, 1);
  t.is(br.stats.floodClones, 1);
  freeAll([p0, p1, p2]);
  guest.flush(() => []);
  assertBalanced(t, ctx, guest);
});

for (const design of [rusty, naive]) {
  test(`flooding uses clones, not copies: every port's skb shares the frame's frags (${design.name})`, (t) => {
    const ctx = newCtx(design);
    const clock = new VirtualClock();
    const br = new Bridge({ clock });
    const src = new HoldingPort('vif0');
    const others = [new HoldingPort('vif1'), new HoldingPort('vif2'), new HoldingPort('eth0')];
    br.addPort(src);
    for (const p of others) br.addPort(p);
    const guest = new FakeGuest(ctx);
    const frame = udpFrame({ src: MAC_A, dst: ETH_BROADCAST, payload: 6000 });
    const skb = guestSkb(ctx, guest, frame, 42, [3000, 2000]);
    const pages = [0, 1, 2].map((i) => skb.shinfo.frags[i]!.page);
    const copiedBefore = ctx.stats.bytesCopied;
    br.input(skb, src);
    t.is(ctx.stats.bytesCopied, copiedBefore, 'no byte copied');
    t.is(src.got.length, 0, 'never back to the source port');
    const got = others.map((p) => p.got[0]!);
    t.is(got[2], skb, 'the last port gets the original');
    for (const g of got) {
      t.is(g.shinfo, skb.shinfo, 'shared shinfo');
      t.deepEqual([0, 1, 2].map((i) => g.shinfo.frags[i]!.page), pages, 'same pages');
    }
    t.is(br.stats.floodClones, 2);
    // The grant goes back only when the last of the three is freed, whatever the order.
    const roots = (): SkBuff[] => collect(...others);
    for (const order of [1, 0]) {
      kfreeSkb(others[order]!.got.pop()!);
      t.is(guest.flush(roots), 0, 'nothing returned while another port holds the frame');
    }
    kfreeSkb(others[2]!.got.pop()!);
    t.is(guest.flush(roots), 3);
    assertBalanced(t, ctx, guest);
  });
}

test('multicast and broadcast are flooded even to learned destinations; known unicast back to its own port is dropped', (t) => {
  const ctx = newCtx(rusty);
  const clock = new VirtualClock();
  const br = new Bridge({ clock });
  const [p0, p1] = [new HoldingPort('vif0'), new HoldingPort('vif1')];
  br.addPort(p0);
  br.addPort(p1);
  const guest = new FakeGuest(ctx);
  br.input(guestSkb(ctx, guest, udpFrame({ src: MAC_A, dst: MAC_C, payload: 20 }), 62), p0);
  br.input(guestSkb(ctx, guest, udpFrame({ src: MAC_C, dst: MAC_B, payload: 20 }), 62), p0); // C now on p0 too
  freeAll([p0, p1]);
  br.input(guestSkb(ctx, guest, udpFrame({ src: MAC_C, dst: MAC_A, payload: 20 }), 62), p0); // A is on p0: drop
  t.is(br.stats.droppedNoPort, 1);
  t.deepEqual([p0.got.length, p1.got.length], [0, 0]);
  br.input(guestSkb(ctx, guest, udpFrame({ src: MAC_A, dst: 0x0100_5e00_0001, payload: 20 }), 62), p0);
  t.deepEqual([p0.got.length, p1.got.length], [0, 1], 'multicast flooded');
  freeAll([p0, p1]);
  guest.flush(() => []);
  assertBalanced(t, ctx, guest);
});

test('bad frames are dropped and counted, never thrown', (t) => {
  const ctx = newCtx(rusty);
  const clock = new VirtualClock();
  const br = new Bridge({ clock });
  const [p0, p1] = [new HoldingPort('vif0'), new HoldingPort('vif1')];
  br.addPort(p0);
  br.addPort(p1);
  const stranger = new HoldingPort('stranger');
  const guest = new FakeGuest(ctx);
  const cases: { name: string; frame: Uint8Array; linear: number; from: HoldingPort; counter: keyof Bridge['stats'] }[] = [];
  const short = udpFrame({ payload: 0 }).subarray(0, 13);
  cases.push({ name: 'too short', frame: short, linear: 13, from: p0, counter: 'droppedShort' });
  // 13 bytes of header in frags only: pskb_may_pull cannot make 14.
  cases.push({ name: 'too short, nonlinear', frame: short, linear: 4, from: p0, counter: 'droppedShort' });
  const mcastSrc = udpFrame({ payload: 10 });
  writeMac(mcastSrc, 6, 0x0100_5e00_0001);
  cases.push({ name: 'multicast source', frame: mcastSrc, linear: 42, from: p0, counter: 'droppedBadSource' });
  const zeroSrc = udpFrame({ payload: 10 });
  writeMac(zeroSrc, 6, 0);
  cases.push({ name: 'zero source', frame: zeroSrc, linear: 42, from: p0, counter: 'droppedBadSource' });
  const stp = udpFrame({ dst: 0x0180_c200_0000, payload: 10 });
  cases.push({ name: 'STP group address', frame: stp, linear: 42, from: p0, counter: 'droppedLinkLocal' });
  const lldp = udpFrame({ dst: 0x0180_c200_000e, payload: 10 });
  cases.push({ name: 'LLDP group address', frame: lldp, linear: 42, from: p0, counter: 'droppedLinkLocal' });
  cases.push({ name: 'not a port', frame: udpFrame({ payload: 10 }), linear: 42, from: stranger, counter: 'droppedNotPort' });
  for (const c of cases) {
    const before = br.stats[c.counter];
    t.notThrows(() => br.input(guestSkb(ctx, guest, c.frame, c.linear, [4096]), c.from), c.name);
    t.is(br.stats[c.counter], before + 1, c.name);
  }
  t.deepEqual([p0.got.length, p1.got.length], [0, 0]);
  // 01:80:c2:00:00:10 is not link-local: flooded.
  br.input(guestSkb(ctx, guest, udpFrame({ dst: 0x0180_c200_0010, payload: 10 }), 42), p0);
  t.is(p1.got.length, 1);
  freeAll([p0, p1]);
  guest.flush(() => []);
  assertBalanced(t, ctx, guest);
});

test('a shared skb is cloned before the bridge touches it (skb_share_check)', (t) => {
  const ctx = newCtx(rusty);
  const br = new Bridge({ clock: new VirtualClock() });
  const [p0, p1] = [new HoldingPort('vif0'), new HoldingPort('vif1')];
  br.addPort(p0);
  br.addPort(p1);
  const guest = new FakeGuest(ctx);
  // Header entirely in frags: the bridge must pull, which it may not do on someone else's skb object.
  const skb = guestSkb(ctx, guest, udpFrame({ payload: 100 }), 0, [4096]);
  skbGet(skb);
  br.input(skb, p0);
  t.is(br.stats.shareClones, 1);
  t.not(p1.got[0], skb);
  t.is(skb.len, 142, 'our skb is untouched');
  t.is(skb.data, 0);
  kfreeSkb(skb);
  freeAll([p1]);
  guest.flush(() => []);
  assertBalanced(t, ctx, guest);
});

test('ageing: an entry is gone exactly ageing_time after its last frame; poll removes it', (t) => {
  const ctx = newCtx(rusty);
  const clock = new VirtualClock();
  const br = new Bridge({ clock, ageingTimeMs: 1000 });
  const [p0, p1] = [new HoldingPort('vif0'), new HoldingPort('vif1')];
  br.addPort(p0);
  br.addPort(p1);
  const guest = new FakeGuest(ctx);
  br.input(guestSkb(ctx, guest, udpFrame({ src: MAC_A, payload: 10 }), 52), p0);
  clock.advance(600);
  br.input(guestSkb(ctx, guest, udpFrame({ src: MAC_A, payload: 10 }), 52), p0); // refresh at 600
  clock.advance(999);
  br.poll(clock.now());
  t.is(br.fdbLookup(MAC_A), p0, 'still known 999 ms after the refresh');
  t.is(br.fdbSize, 1);
  clock.advance(1);
  t.is(br.fdbLookup(MAC_A), null, 'gone at exactly 1000 ms');
  clock.advance(10); // br_fdb_cleanup runs at most every 10 ms
  br.poll(clock.now());
  t.is(br.fdbSize, 0);
  t.is(br.stats.aged, 1);
  // An expired destination is flooded again.
  br.input(guestSkb(ctx, guest, udpFrame({ src: MAC_B, dst: MAC_A, payload: 10 }), 52), p1);
  t.is(p0.got.length, 1);
  t.is(br.stats.flooded, 3);
  freeAll([p0, p1]);
  guest.flush(() => []);
  assertBalanced(t, ctx, guest);
  t.is(new Bridge({ clock }).ageingTimeMs, BR_DEFAULT_AGEING_TIME_MS);
  t.is(BR_DEFAULT_AGEING_TIME_MS, 300_000);
});

test('a full forwarding database learns nothing new; removePort flushes its entries', (t) => {
  const ctx = newCtx(rusty);
  const clock = new VirtualClock();
  const br = new Bridge({ clock, maxLearned: 2 });
  const [p0, p1, p2] = [new HoldingPort('vif0'), new HoldingPort('vif1'), new HoldingPort('vif2')];
  for (const p of [p0, p1, p2]) br.addPort(p);
  const guest = new FakeGuest(ctx);
  br.input(guestSkb(ctx, guest, udpFrame({ src: MAC_A, payload: 10 }), 52), p0);
  br.input(guestSkb(ctx, guest, udpFrame({ src: MAC_B, payload: 10 }), 52), p1);
  br.input(guestSkb(ctx, guest, udpFrame({ src: MAC_C, payload: 10 }), 52), p2);
  t.is(br.stats.fdbFull, 1);
  t.is(br.fdbLookup(MAC_C), null);
  br.removePort(p0);
  t.is(br.fdbLookup(MAC_A), null);
  t.is(br.fdbLookup(MAC_B), p1);
  t.is(br.portCount, 2);
  t.is(br.addPort(new HoldingPort('vif3')), 0, 'the lowest free port number is reused');
  t.throws(() => br.addPort(p1), { message: 'bridge: vif1 is already a port' });
  t.throws(() => br.removePort(p0), { message: 'bridge: vif0 is not a port' });
  t.throws(() => new Bridge({ clock, ageingTimeMs: 0 }), { message: 'bridge ageingTimeMs must be > 0, got 0' });
  t.throws(() => new Bridge({ clock, maxLearned: 0 }), { message: 'bridge maxLearned must be a positive integer, got 0' });
  freeAll([p0, p1, p2]);
  guest.flush(() => []);
  assertBalanced(t, ctx, guest);
});

// Model-based: an independent Map model of learning, ageing and port removal decides, for every frame, the
// exact set of ports it must reach; the forwarding table (open addressing with backward-shift deletion) is
// stressed by many MACs that collide in a small table.
const NPORTS = 4;
const MACS = 40;
const macOf = (i: number): number => (i === MACS ? ETH_BROADCAST : 0x0216_3e00_0000 + i * 0x1_0000 + (i % 7));

testProp(
  'forwarding matches an independent model of learning, ageing and port removal',
  [
    fc.array(
      fc.oneof(
        { weight: 8, arbitrary: fc.record({ kind: fc.constant('frame' as const), from: fc.nat(NPORTS - 1), src: fc.nat(MACS - 1), dst: fc.nat(MACS) }) },
        { weight: 2, arbitrary: fc.record({ kind: fc.constant('advance' as const), ms: fc.integer({ min: 1, max: 700 }) }) },
        { weight: 1, arbitrary: fc.record({ kind: fc.constant('poll' as const) }) },
        { weight: 1, arbitrary: fc.record({ kind: fc.constant('remove' as const), port: fc.nat(NPORTS - 1) }) },
      ),
      { maxLength: 200 },
    ),
  ],
  (t, ops) => {
    const ctx = newCtx(rusty);
    const clock = new VirtualClock();
    const AGE = 1000;
    const br = new Bridge({ clock, ageingTimeMs: AGE, maxLearned: MACS });
    const ports: (HoldingPort | null)[] = [];
    for (let i = 0; i < NPORTS; i++) {
      ports.push(new HoldingPort(`p${i}`));
      br.addPort(ports[i]!);
    }
    const model = new Map<number, { port: number; at: number }>();
    const guest = new FakeGuest(ctx);
    for (const op of ops) {
      if (op.kind === 'advance') clock.advance(op.ms);
      else if (op.kind === 'poll') br.poll(clock.now());
      else if (op.kind === 'remove') {
        const p = ports[op.port];
        if (p === null || p === undefined) continue;
        br.removePort(p);
        ports[op.port] = null;
        for (const [m, e] of model) if (e.port === op.port) model.delete(m);
      } else {
        const from = ports[op.from];
        if (from === null || from === undefined) continue;
        const now = clock.now();
        const dst = macOf(op.dst);
        const src = macOf(op.src);
        model.set(src, { port: op.from, at: now });
        const known = model.get(dst);
        let expect: number[];
        if (op.dst !== MACS && known !== undefined && known.at + AGE > now) expect = known.port === op.from ? [] : [known.port];
        else expect = ports.flatMap((p, i) => (p !== null && i !== op.from ? [i] : []));
        const before = ports.map((p) => p?.got.length ?? 0);
        br.input(guestSkb(ctx, guest, udpFrame({ src, dst, payload: 8 }), 50), from);
        const reached = ports.flatMap((p, i) => (p !== null && p.got.length > before[i]! ? [i] : []));
        t.deepEqual(reached, expect);
        freeAll(ports.filter((p): p is HoldingPort => p !== null));
      }
      for (let m = 0; m < MACS; m++) {
        const e = model.get(macOf(m));
        const want = e !== undefined && e.at + AGE > clock.now() ? ports[e.port] : null;
        if (br.fdbLookup(macOf(m)) !== want) {
          t.fail(`fdb lookup of mac ${m} disagrees with the model`);
          return;
        }
      }
    }
    guest.flush(() => []);
    assertBalanced(t, ctx, guest);
  },
);

test('removing every port of a crowded table leaves it empty (backward-shift deletion keeps probe runs intact)', (t) => {
  const clock = new VirtualClock();
  const ctx = newCtx(rusty);
  const br = new Bridge({ clock, maxLearned: 4 }); // 8 slots
  const ports = [new HoldingPort('a'), new HoldingPort('b')];
  for (const p of ports) br.addPort(p);
  const guest = new FakeGuest(ctx);
  for (let i = 0; i < 4; i++) br.input(guestSkb(ctx, guest, udpFrame({ src: 0x0216_3e00_1000 + i, payload: 8 }), 50), ports[i % 2]!);
  t.is(br.fdbSize, 4);
  br.removePort(ports[0]!);
  t.is(br.fdbSize, 2);
  for (let i = 0; i < 4; i++) t.is(br.fdbLookup(0x0216_3e00_1000 + i), i % 2 === 1 ? ports[1]! : null);
  freeAll(ports);
  guest.flush(() => []);
  assertBalanced(t, ctx, guest);
  t.is(reachableForeignPages([]).size, 0);
});
