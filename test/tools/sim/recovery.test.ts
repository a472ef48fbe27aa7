// Recovery from the faults that take something away: a receiver that stops reading, a guest that dies, a backend
// that dies. Each has its visible effect and the run ends with a clean audit; and a backend that notifies a dead
// guest is caught.
import test from 'ava';
import { SimWorld } from '../../../tools/sim/world.js';
import { assertClean, fields, sim } from './helpers.js';

test('slow-receiver: once its RX ring is full, frames for the guest pile up in its vif\'s RX queue until it catches up', async (t) => {
  const r = await sim('500 slow-receiver g=2 dur=2200 every=100');
  assertClean(t, r);
  const f = fields(r, 'fault-end slow-receiver');
  t.true(Number(f.rxq) + Number(f.queueFull) > 20, `queued ${f.rxq}, refused ${f.queueFull}`);
  const base = fields(await sim('500 slow-receiver g=2 dur=2200 every=1'), 'fault-end slow-receiver');
  t.is(Number(base.rxq) + Number(base.queueFull), 0, 'a receiver that keeps up queues nothing');
});

test('stalled-receiver (ctrl-Z): netback\'s drain timeout drops what waits, freeing the senders\' pages while the guest still sleeps', async (t) => {
  const text = '500 stalled-receiver g=2 dur=2000';
  const r = await sim(text, { rxDrainTimeoutMs: 300 });
  assertClean(t, r);
  const f = fields(r, 'fault-end stalled-receiver');
  t.true(Number(f.drainDropped) > 0, `${f.drainDropped} dropped at the drain timeout`);
  // Without the timeout within the window, the queue keeps pinning the other guests' pages.
  const kept = fields(await sim(text, { rxDrainTimeoutMs: 10_000 }), 'fault-end stalled-receiver');
  t.is(Number(kept.drainDropped), 0);
  t.true(Number(f.pinned) < Number(kept.pinned), `${f.pinned} pages pinned with the timeout vs ${kept.pinned} without`);
});

test('guest-kill: the dead guest\'s vif is torn down (never notified), the slot boots a new domain that connects, nothing leaks', async (t) => {
  const r = await sim('1000 guest-kill g=2 restart=500');
  assertClean(t, r);
  const log = r.eventLog;
  const kill = log.indexOf(' g2.d2 killed why=fault ');
  const removed = log.indexOf(' backend#1 vif-removed vif=vif2.0');
  const boot = log.indexOf(' g2.d4 boot');
  const up = log.indexOf(' g2.d4 connected connects=1');
  t.true(kill > 0 && removed > kill && boot > removed && up > boot, 'killed, vif removed, new domain booted and connected, in that order');
  t.regex(log, / backend#1 xenbus vif=vif2\.0 state=Closed/);
});

test('backend-kill: the hypervisor releases its mappings, a new backend starts, every guest goes Closed -> Initialising -> Connected, granted == returned', async (t) => {
  const r = await sim('1500 backend-kill release=200 restart=500');
  assertClean(t, r);
  const log = r.eventLog;
  const at = log.indexOf(' backend#1 killed why=fault ');
  t.true(at > 0);
  const after = log.slice(at);
  t.true(Number(fields(r, 'hypervisor domain-kill').released) > 0, 'the dead backend had grants mapped, and they were released');
  t.regex(after, / backend#2 start/);
  for (const d of [1, 2, 3]) {
    const steps = [
      ` toolstack xenbus vif=vif${d}.0 state=Closing`,
      ` g${d}.d${d} xenbus vif=vif${d}.0 state=Closed`,
      ` g${d}.d${d} xenbus vif=vif${d}.0 state=Initialising`,
      ` backend#2 xenbus vif=vif${d}.0 state=InitWait`,
      ` g${d}.d${d} xenbus vif=vif${d}.0 state=Connected`,
      ` g${d}.d${d} connected connects=2`,
    ];
    let from = 0;
    for (const s of steps) {
      const i = after.indexOf(s, from);
      t.true(i >= from, `g${d}: "${s.trim()}" after the previous step`);
      from = i;
    }
  }
});

test('a backend that raises an event on a dead guest is caught: every raise on its domain after death is an error', async (t) => {
  const w = await SimWorld.create({ seed: 4, guests: 2 });
  t.true(await w.waitConnected());
  w.setTraffic(true);
  await w.run(300);
  const victim = w.slots[0]!;
  t.true(w.killGuest(1, 50, 'test'));
  await w.run(200);
  t.deepEqual(w.errors, [], 'netback itself never notified it');
  // What a buggy netback would do: raise the dead guest's port.
  w.evtchn.domain(victim.domid).raise(1);
  w.setTraffic(false);
  await w.shutdown();
  t.deepEqual(w.errors, [`backend notified dead ${victim.name} 1 times`]);
});

test('killing what is already dead, or a slot that does not exist, does nothing', async (t) => {
  const w = await SimWorld.create({ seed: 4, guests: 1 });
  t.true(await w.waitConnected());
  t.false(w.killGuest(2, 10, 'test'));
  t.true(w.killBackend(0, 100, 'test'));
  t.false(w.killBackend(0, 100, 'test'), 'the backend is already dead');
  t.true(await w.waitConnected(), 'and it comes back');
  await w.shutdown();
  t.deepEqual(w.errors, []);
});

test('a guest killed at the very moment netback frees its pages (a NIC stall ending) is never sent their return', async (t) => {
  // The stall holds the victim's pages; the kill fires at the stall's end, so the backend's first step after the
  // death completes the NIC ring and hands those grants back: it must already know the guest is gone.
  for (const g of [1, 2, 3]) {
    const r = await sim(`1000 nic-stall dur=500\n1500 guest-kill g=${g} restart=300`);
    assertClean(t, r);
    t.true(Number(fields(r, 'fault-end nic-stall').inflight) > 0);
  }
});

test('a backend that throws (a Linux BUG) is a crash: counted, reported, replaced, and every guest reconnects', async (t) => {
  const w = await SimWorld.create({ seed: 6, guests: 2 });
  t.true(await w.waitConnected());
  w.setTraffic(true);
  await w.run(200);
  let thrown = false;
  w.backend!.dom0.roundHooks.push(() => {
    if (thrown) return 0;
    thrown = true;
    throw new Error('BUG at drivers/net/xen-netback/netback.c:1');
  });
  await w.run(100);
  t.true(thrown);
  t.is(w.backendCrashes, 1);
  t.true(await w.waitConnected(), 'a new backend, every guest connected to it');
  t.is(w.backend!.name, 'backend#2');
  await w.run(300);
  w.setTraffic(false);
  await w.shutdown();
  t.is(w.errors.length, 1);
  t.regex(w.errors[0]!, /^backend#1 crashed: Error: BUG at drivers\/net\/xen-netback\/netback\.c:1/);
  t.regex(w.log.text(), / backend#1 crashed error=Error:_BUG_at_drivers\/net\/xen-netback\/netback\.c:1\n/);
});

test('a guest that throws is a crash of that guest only: its slot boots a new domain, the others carry on', async (t) => {
  const w = await SimWorld.create({ seed: 6, guests: 2 });
  t.true(await w.waitConnected());
  w.setTraffic(true);
  await w.run(200);
  const g = w.slots[1]!;
  g.nf.pollTx = () => {
    throw new Error('netfront BUG');
  };
  await w.run(50);
  t.true(g.dead);
  t.not(w.slots[1], g);
  t.true(await w.waitConnected());
  t.is(w.slots[1]!.slot, 2);
  t.is(w.backendCrashes, 0);
  w.setTraffic(false);
  await w.shutdown();
  t.is(w.errors.length, 1);
  t.regex(w.errors[0]!, new RegExp(`^${g.name} crashed: Error: netfront BUG`));
});
