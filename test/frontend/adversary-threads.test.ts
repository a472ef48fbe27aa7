// The adversary's second vcpu as a real thread. The double fetch (XSA-155): a worker rewrites the TX ring while
// netback is inside its TX action, between reading the requests and answering them; the rewrite is forced at that
// exact point with an Atomics gate (netback's thread blocks until the worker has rewritten every slot), never a sleep.
// The event flood (XSA-332/391): a worker notifies as fast as it can while the honest guests exchange traffic.
import test from 'ava';
import { fc, testProp } from '@fast-check/ava';
import { Worker } from 'node:worker_threads';
import { ADVERSARY_CASES, HostileFront, runAdversaryCase, type AdversaryHost } from '../../frontend/adversary.js';
import { AdversaryRig } from '../../frontend/adversary-rig.js';
import { XEN_NETIF_RSP_OKAY } from '../../shared/netif.js';
import {
  CONTROL_WORDS,
  FAILED,
  FLOOD_BATCH,
  GATE,
  GATE_GO,
  GATE_STOP,
  READY,
  REWRITES,
  SENT,
  rewriteNow,
  type FlooderData,
  type RewriterData,
} from './fixtures/adversary-gate.js';

/** Starts the rewriter on the adversary's TX ring (frame 0 of its memory) and waits until it is attached. */
async function startRewriter(t: { teardown: (fn: () => void) => void }, memory: SharedArrayBuffer, seed: number): Promise<Int32Array> {
  const control = new SharedArrayBuffer(CONTROL_WORDS * 4);
  const ctl = new Int32Array(control);
  const data: RewriterData = { memory, ringOffset: 0, control, seed };
  const worker = new Worker(new URL('./fixtures/adversary-rewriter.js', import.meta.url), { workerData: data });
  t.teardown(() => {
    Atomics.store(ctl, GATE, GATE_STOP);
    Atomics.notify(ctl, GATE);
    void worker.terminate();
  });
  const ready = Atomics.waitAsync(ctl, READY, 0, 10_000);
  if (ready.async) await ready.value;
  if (Atomics.load(ctl, READY) !== 1) throw new Error('the rewriter never attached');
  return ctl;
}

test('adversary (thread): double-fetch-during-map, the ring rewritten by a second thread', async (t) => {
  const rig = await AdversaryRig.create();
  let ctl: Int32Array | null = null;
  let memory: SharedArrayBuffer | null = null;
  // The case asks the host to run its rewrite inside netback's TX action; here a real thread does the rewriting.
  const host = new Proxy(rig, {
    get(target, prop) {
      if (prop === 'interleave') return (domid: number) => target.interleave(domid, () => rewriteNow(ctl!));
      if (prop === 'createGuest') {
        return async () => {
          const g = await target.createGuest();
          memory = g.memory.sab;
          ctl = await startRewriter(t, memory, 0x5eed);
          return g;
        };
      }
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  }) as AdversaryHost;
  const c = ADVERSARY_CASES.find((x) => x.name === 'double-fetch-during-map')!;
  const r = await runAdversaryCase(c, host);
  t.true(r.handled, r.detail);
  t.is(Atomics.load(ctl!, REWRITES), 1, 'the worker rewrote the ring once, inside the TX action');
  // A slot no response overwrote still holds the worker's garbage: the rewrite really happened.
  t.is(new DataView(memory!).getUint16(64 + 100 * 12 + 8, true), 0xbe01);
  t.deepEqual(await rig.quiesce(), { ok: true, value: 0 });
});

// No zero-length frags: netback answers those before the action's grant operations, so the rewrite would land on
// their responses (the guest scribbling on its own answers), not on requests.
const slotArb = fc.record({ size: fc.integer({ min: 1, max: 200 }), offset: fc.integer({ min: 0, max: 3800 }) });

testProp(
  'adversary (thread): every packet rewritten with random garbage after netback read it arrives intact, answered with its own ids',
  [fc.array(fc.array(slotArb, { minLength: 0, maxLength: 6 }), { minLength: 1, maxLength: 12 }), fc.integer({ min: 1, max: 0x7fffffff })],
  async (t, packets, seed) => {
    const rig = await AdversaryRig.create();
    const g = await rig.createGuest();
    const f = new HostileFront(rig, g);
    const ctl = await startRewriter(t, g.memory.sab, seed);
    t.is(await f.connect(), 4);
    t.true(await f.announce());
    let rounds = 0;
    for (const frags of packets) {
      const up0 = rig.uplink().udpVerified;
      // A first slot that holds at least the headers; the frags are whatever fast-check made.
      const p = f.sendPacket([{ size: 300 }, ...frags], { push: false });
      rig.interleave(f.domid, () => rewriteNow(ctl));
      f.push();
      t.true(await f.runUntilAnswered(p.ids), `packet ${rounds} answered`);
      await rig.run(1, () => rig.uplink().udpVerified > up0);
      rounds++;
      t.deepEqual(
        p.ids.map((id) => f.statuses(id)),
        p.ids.map(() => [XEN_NETIF_RSP_OKAY]),
      );
      t.is(rig.uplink().udpVerified - up0, 1, 'delivered intact');
      t.is(Atomics.load(ctl, REWRITES), rounds, 'rewritten once per packet');
    }
    t.false(f.vif()!.disabled);
    t.deepEqual(f.troubles, []);
    await rig.destroyGuest(f.domid);
    await rig.run(1000, () => f.inUseRefs().length === 0);
    t.deepEqual(f.inUseRefs(), []);
    t.deepEqual(await rig.quiesce(), { ok: true, value: 0 });
    t.deepEqual(rig.audit().violations, []);
  },
  { numRuns: 8 },
);

test('adversary (thread): an event flood from a second thread; every round of the system runs under it and the honest guests are unharmed', async (t) => {
  const rig = await AdversaryRig.create();
  const g = await rig.createGuest();
  const f = new HostileFront(rig, g);
  t.is(await f.connect(), 4);
  const control = new SharedArrayBuffer(CONTROL_WORDS * 4);
  const ctl = new Int32Array(control);
  const data: FlooderData = { evtchn: rig.evtchn.buffer, domid: f.domid, port: f.port, control };
  const worker = new Worker(new URL('./fixtures/adversary-flooder.js', import.meta.url), { workerData: data });
  const exited = new Promise<number>((resolve) => worker.once('exit', resolve));
  t.teardown(() => {
    Atomics.store(ctl, GATE, GATE_STOP);
    Atomics.notify(ctl, GATE);
    void worker.terminate();
  });
  const ready = Atomics.waitAsync(ctl, READY, 0, 10_000);
  if (ready.async) await ready.value;
  t.is(Atomics.load(ctl, READY), 1, 'the flooder attached');
  Atomics.store(ctl, GATE, GATE_GO);
  Atomics.notify(ctl, GATE);
  // Gate every round of the system on a fresh batch of notifications: the flood provably overlaps all of it.
  let seen = 0;
  let rounds = 0;
  const underFlood = (): void => {
    if (Atomics.wait(ctl, SENT, seen, 5000) === 'timed-out') throw new Error('the flooder stopped flooding');
    seen = Atomics.load(ctl, SENT);
    rounds++;
  };
  const r = await rig.exchange(64, underFlood);
  t.deepEqual(r, { ok: true, value: undefined });
  const p = f.sendPacket([{ size: 1400 }]);
  t.true(await f.runUntilAnswered(p.ids, 200));
  t.deepEqual(f.statuses(p.ids[0]!), [XEN_NETIF_RSP_OKAY], 'the flooder itself is still served, no more than anyone');
  Atomics.store(ctl, GATE, GATE_STOP);
  Atomics.notify(ctl, GATE);
  t.is(await exited, 0);
  t.true(rounds >= 5, `${rounds} rounds under the flood`);
  t.true(Atomics.load(ctl, SENT) >= rounds * FLOOD_BATCH, `${Atomics.load(ctl, SENT)} notifications`);
  t.is(Atomics.load(ctl, FAILED), 0, 'every notify reached the backend\'s port');
  t.false(f.vif()!.disabled);
  await rig.destroyGuest(f.domid);
  await rig.run(1000, () => f.inUseRefs().length === 0);
  t.deepEqual(f.inUseRefs(), []);
  t.deepEqual(await rig.quiesce(), { ok: true, value: 0 });
  t.deepEqual(rig.audit().violations, []);
});
