import test from 'ava';
import { ETH_P_IP, writeEthHeader } from '../../shared/ether.js';
import { Random } from '../../shared/random.js';
import { XEN_NETIF_RSP_OKAY } from '../../shared/netif.js';
import { Stack } from '../../backend/stack.js';
import { kfreeSkb } from '../../backend/skbuff.js';
import { Rig, type TestGuest } from './netback-rig.js';

const MAC_A = 0x020000000001;
const MAC_B = 0x020000000002;

function frame(dst: number, src: number, len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (i * 13 + seed) & 0xff;
  writeEthHeader(b, 0, dst, src, ETH_P_IP);
  return b;
}

function onStack(rig: Rig, guests: TestGuest[], tap = false): Stack {
  const stack = new Stack({
    ctx: rig.ctx,
    clock: rig.clock,
    random: new Random(7),
    nic: { features: { sg: true, tso: true }, completionDelayMs: 5 },
    tap: tap ? { holdMs: 50, scope: 'all' } : null,
  });
  rig.holders.push(stack);
  for (const g of guests) {
    g.vif.setInput(null);
    g.vif.attach(stack);
  }
  return stack;
}

test('guest to guest over the bridge: A\'s grant comes back only once B received it and the NIC finished', (t) => {
  const rig = new Rig();
  const a = rig.guest(1);
  const b = rig.guest(2);
  const stack = onStack(rig, [a, b]);
  const bytes = frame(MAC_B, MAC_A, 1400, 1);
  const p = a.send([{ size: 1400 }], { bytes });
  t.is(a.vif.txAction(), 1);
  t.is(stack.bridge.stats.flooded, 1, 'B is not learned yet: flooded to B and the uplink');
  t.is(b.vif.rx!.queuedPackets, 1);
  a.vif.flushDealloc();
  t.deepEqual(a.txResponses(), []);
  const posted = b.postRx(1);
  t.is(b.vif.rxAction(), 1);
  const r = b.rxResponses();
  t.deepEqual(r.map((x) => [x.id, x.status]), [[posted[0]!.id, 1400]]);
  t.deepEqual(b.mem.frame(posted[0]!.frame).slice(0, 1400), bytes);
  a.vif.flushDealloc();
  t.deepEqual(a.txResponses(), [], 'the uplink NIC still holds its clone');
  rig.clock.advance(5);
  stack.poll(rig.clock.now());
  t.is(a.vif.flushDealloc(), 1);
  t.deepEqual(a.txResponses(), [{ id: p.ids[0], status: XEN_NETIF_RSP_OKAY }]);
  rig.oracle.checkQuiescent();
  t.deepEqual(rig.oracle.report.violations, []);
  t.is(rig.mapper.stats().liveHandles, 0);
});

test('the stack clock is pinned for one TX action only: its frames carry the time it began, the next action a new one', (t) => {
  const rig = new Rig();
  const a = rig.guest(1);
  const b = rig.guest(2);
  const stack = onStack(rig, [a, b]);
  rig.clock.advance(3);
  // The NIC stamps each frame's completion at enqueue: both frames of one action complete at its start + 5 ms.
  a.send([{ size: 200 }], { bytes: frame(MAC_B, MAC_A, 200, 1) });
  a.send([{ size: 200 }], { bytes: frame(MAC_B, MAC_A, 200, 2) });
  t.is(a.vif.txAction(), 2);
  t.is(stack.nic.nextDeadline(), 8);
  t.is(stack.clock.now(), 3, 'the batch is over: the stack reads the clock again');
  rig.clock.advance(1);
  t.is(stack.clock.now(), 4);
  a.send([{ size: 200 }], { bytes: frame(MAC_B, MAC_A, 200, 3) });
  t.is(a.vif.txAction(), 1);
  stack.poll(8);
  t.is(stack.nic.inFlight, 1, 'the second action\'s frame completes at 9, not 8');
  t.is(stack.nic.nextDeadline(), 9);
  b.vif.rx!.purge();
});

test('the bridge learns: B\'s reply goes to A alone; a tap on every port keeps A\'s grants until its window ends', (t) => {
  const rig = new Rig();
  const a = rig.guest(1);
  const b = rig.guest(2);
  const stack = onStack(rig, [a, b], true);
  a.send([{ size: 1000 }], { bytes: frame(MAC_B, MAC_A, 1000, 2) });
  a.vif.txAction();
  b.postRx(4);
  b.vif.rxAction();
  b.rxResponses();
  const q = b.send([{ size: 800 }], { bytes: frame(MAC_A, MAC_B, 800, 3) });
  b.vif.txAction();
  t.is(stack.bridge.stats.forwarded, 1);
  t.is(a.vif.rx!.queuedPackets, 1);
  a.postRx(2);
  a.vif.rxAction();
  rig.clock.advance(10);
  stack.poll(rig.clock.now());
  t.is(stack.nic.stats.frames, 1, 'only the first frame was flooded to the uplink');
  b.vif.flushDealloc();
  t.deepEqual(b.txResponses(), [], 'the tap still holds its clone of B\'s frame');
  rig.clock.advance(50);
  stack.poll(rig.clock.now());
  a.vif.flushDealloc();
  b.vif.flushDealloc();
  t.deepEqual(b.txResponses(), [{ id: q.ids[0], status: XEN_NETIF_RSP_OKAY }]);
  t.is(a.txResponses().length, 1);
  rig.oracle.checkQuiescent();
  t.deepEqual(rig.oracle.report.violations, []);
  const st = a.vif.stats;
  t.is(st.txZerocopySent, st.txZerocopySuccess + st.txZerocopyFail);
});

test('teardown: the RX queue is binned, grants the stack holds are waited for, then the vif can reconnect', async (t) => {
  const rig = new Rig();
  const a = rig.guest(1);
  const b = rig.guest(2);
  // B has a frame of A's queued, and the stack holds another of A's.
  a.send([{ size: 1000 }]);
  a.send([{ size: 1000 }]);
  a.vif.txAction();
  b.vif.startXmit(rig.held.shift()!);
  t.is(b.vif.rx!.queuedPackets, 1);
  b.vif.beginDisconnect();
  t.is(b.vif.rx!.queuedPackets, 0, 'B\'s RX queue is purged');
  t.is(a.vif.flushDealloc(), 1, 'which gives A one grant back');

  a.vif.beginDisconnect();
  t.is(a.vif.state, 'disconnecting');
  t.is(a.vif.txAction(), 0);
  t.false(a.vif.isDrained());
  t.deepEqual(a.vif.heldGrants().map((g) => g.state), ['inflight']);
  t.throws(() => a.vif.finishDisconnect(), { message: 'vif1.0: 1 grants are still mapped' });
  let drained = false;
  const w = a.vif.whenDrained().then(() => (drained = true));
  await Promise.resolve();
  t.false(drained);
  kfreeSkb(rig.held.pop()!);
  a.vif.flushDealloc();
  await w;
  t.true(drained);
  t.is(a.txResponses().length, 2, 'the responses still went to the ring');
  a.vif.finishDisconnect();
  t.is(a.vif.state, 'idle');
  t.is(rig.mapper.stats().liveHandles, 0);
  a.reconnect();
  const p = a.send([{ size: 60 }]);
  t.is(a.vif.txAction(), 1);
  t.deepEqual(a.txResponses(), [{ id: p.ids[0], status: XEN_NETIF_RSP_OKAY }]);
  rig.freeAll();
});

test('FATAL: the RX queue is binned, in-flight grants still come back, and a reconnect clears the state', (t) => {
  const rig = new Rig();
  const a = rig.guest(1);
  const b = rig.guest(2);
  const p = a.send([{ size: 2000 }]);
  a.vif.txAction();
  b.vif.startXmit(rig.held.pop()!);
  b.send([{ size: 100, offset: 4000 }]);
  b.vif.txAction();
  t.true(b.vif.disabled);
  t.is(b.vif.rx!.queuedPackets, 0);
  t.is(b.vif.stats.fatalErrors, 1);
  t.is(a.vif.flushDealloc(), 1);
  t.deepEqual(a.txResponses(), [{ id: p.ids[0], status: XEN_NETIF_RSP_OKAY }]);
  b.reconnect();
  t.false(b.vif.disabled);
  t.is(b.vif.fatalError, null);
  t.true(b.vif.carrier);
  const q = b.send([{ size: 60 }]);
  t.is(b.vif.txAction(), 1);
  t.deepEqual(b.txResponses(), [{ id: q.ids[0], status: XEN_NETIF_RSP_OKAY }]);
  rig.freeAll();
});

test('the vif is a NetDevice named vifD.H whose features follow the frontend', (t) => {
  const rig = new Rig();
  const a = rig.guest(1, { features: { canSg: false, gsoMask: 0b10 } });
  t.is(a.vif.name, 'vif1.0');
  t.deepEqual(a.vif.features, { sg: false, tso: false });
  const b = rig.guest(2, { features: { canSg: true, gsoMask: 0b10 } });
  t.deepEqual(b.vif.features, { sg: true, tso: true });
  t.is(b.vif.mtu, 1500);
});

test('hasWork: requests, released pages and RX deadlines all count', (t) => {
  const rig = new Rig();
  const a = rig.guest(1);
  t.false(a.vif.hasWork());
  a.send([{ size: 1000 }]);
  t.true(a.vif.hasWork());
  a.vif.txAction();
  t.false(a.vif.hasWork());
  kfreeSkb(rig.held.pop()!);
  t.true(a.vif.hasWork(), 'a released page waits for flushDealloc');
  a.vif.flushDealloc();
  t.false(a.vif.hasWork());
  a.vif.interrupt();
  t.true(a.vif.hasWork());
});
