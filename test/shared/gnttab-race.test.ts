import test from 'ava';
import type { ExecutionContext } from 'ava';
import { Worker } from 'node:worker_threads';
import { VirtualClock } from '../../shared/clock.js';
import {
  ENOSPC,
  GNTMAP_host_map,
  GNTMAP_readonly,
  GNTST_general_error,
  GNTST_okay,
  GTF_permit_access,
  GTF_reading,
  GTF_writing,
  GrantTable,
  gntstName,
} from '../../shared/gnttab.js';
import { GNTTAB_CMPXCHG_ATTEMPTS, GrantMapper } from '../../shared/gnttab-mapper.js';
import { GuestMemory } from '../../shared/memory.js';
import * as C from './fixtures/gnttab-ctl.js';

// Waits (without blocking the event loop) until slot `i` holds `value`; fails after `ms`.
async function waitFor(ctl: Int32Array, i: number, value: number, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = Atomics.load(ctl, i);
    if (v === value) return;
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`timed out waiting for ctl[${i}] == ${value} (it is ${v})`);
    const w = Atomics.waitAsync(ctl, i, v, left);
    if (w.async) await w.value;
  }
}

// Waits (without blocking the event loop) until slot `i` holds at least `value`.
async function waitAtLeast(ctl: Int32Array, i: number, value: number, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = Atomics.load(ctl, i);
    if (v >= value) return;
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`timed out waiting for ctl[${i}] >= ${value} (it is ${v})`);
    const w = Atomics.waitAsync(ctl, i, v, left);
    if (w.async) await w.value;
  }
}

function startWorker(t: ExecutionContext, file: string, workerData: unknown, stop: () => void): Worker {
  const w = new Worker(new URL(file, import.meta.url), { workerData });
  w.on('error', (e) => t.fail(`worker error: ${String(e)}`));
  t.teardown(async () => {
    stop();
    await w.terminate();
  });
  return w;
}

function guest(nrEntries = 32) {
  const clock = new VirtualClock();
  const logs: [string, string][] = [];
  const table = new GrantTable({ domid: C.GUEST_DOMID, nrEntries, clock, log: (l, m) => logs.push([l, m]) });
  const mem = GuestMemory.create(4);
  const ctl = new Int32Array(new SharedArrayBuffer(C.CTL_SLOTS * 4));
  return { clock, logs, table, mem, ctl };
}

function startBackend(t: ExecutionContext, g: ReturnType<typeof guest>, mode: 'hold' | 'race'): Worker {
  const data: C.BackendData = {
    table: g.table.entries.sab,
    memory: g.mem.sab,
    ctl: g.ctl.buffer as SharedArrayBuffer,
    mode,
    raceIters: 3000,
    afterEnd: 200,
  };
  return startWorker(t, './fixtures/gnttab-backend.js', data, () => C.publish(g.ctl, C.CTL_ROUND, C.CTL_QUIT));
}

test('map/end race: an end succeeds only while unmapped, and no map succeeds after it', async (t) => {
  const g = guest();
  const { table, ctl } = g;
  startBackend(t, g, 'race');
  const ROUNDS = 25;
  let refused = 0;
  for (let round = 1; round <= ROUNDS; round++) {
    const ref = table.grantForeignAccess(C.BACKEND_DOMID, round % 4, false);
    Atomics.store(ctl, C.CTL_REF, ref);
    C.publish(ctl, C.CTL_ROUND, round);
    await waitFor(ctl, C.CTL_HELD, round);
    // Gate: the backend holds the mapping now, so the end must be refused.
    t.is(Atomics.load(ctl, C.CTL_ERROR), 0);
    t.true(table.queryForeignAccess(ref));
    t.false(table.endForeignAccessRef(ref), 'refused while mapped');
    C.publish(ctl, C.CTL_GO, round);
    // Race: the backend maps and unmaps in a loop while we try to end.
    let ended = false;
    for (;;) {
      const idle = Atomics.load(ctl, C.CTL_IDLE) === round;
      ended = table.endForeignAccessRef(ref);
      if (ended) break;
      refused++;
      if (idle) break; // the backend holds nothing: this end had to succeed
    }
    const mappedAtEnd = Atomics.load(ctl, C.CTL_MAPPED);
    C.publish(ctl, C.CTL_ENDED, round);
    await waitFor(ctl, C.CTL_DONE, round);
    t.true(ended, 'an end succeeds once the backend holds no mapping');
    if (!ended) return;
    t.is(mappedAtEnd, 0, 'the backend did not hold a mapping when the end succeeded');
    t.is(table.entries.flags(ref), 0, 'nothing re-pinned the ended entry');
    t.is(Atomics.load(ctl, C.CTL_VIOLATIONS), 0, 'no map succeeded after the end');
    t.is(Atomics.load(ctl, C.CTL_ERROR), 0, 'every failed map was GNTST_general_error');
    table.freeRef(ref);
  }
  const ok = Atomics.load(ctl, C.CTL_MAPS_OK);
  const failed = Atomics.load(ctl, C.CTL_MAPS_FAILED);
  t.true(failed >= ROUNDS * 200, 'every round tried maps after the end');
  t.log(`racing maps: ${ok} ok, ${failed} failed; ends refused while racing: ${refused}`);
});

for (const mode of ['xor', 'store'] as const) {
  test(`a guest flipping its flags (${mode}) as fast as it can never hangs a map`, async (t) => {
    const g = guest();
    const { table, mem } = g;
    const ref = table.grantForeignAccess(C.BACKEND_DOMID, 1, false);
    const ctl = new Int32Array(new SharedArrayBuffer(16));
    const data: C.FlipperData = { table: table.entries.sab, ctl: ctl.buffer as SharedArrayBuffer, ref, mode };
    startWorker(t, './fixtures/gnttab-flipper.js', data, () => C.publish(ctl, C.FLIP_STOP, 1));
    await waitFor(ctl, C.FLIP_STARTED, 1);
    const mapper = new GrantMapper({ domid: C.BACKEND_DOMID });
    mapper.addDomain(C.GUEST_DOMID, table.entries.sab, mem.sab);
    await waitAtLeast(ctl, C.FLIP_COUNT, 1024);
    // Map until we did MIN_MAPS and the flipper made FLIPS flips meanwhile: the two surely overlapped.
    const MIN_MAPS = 4000;
    const FLIPS = 50_000;
    const MAX_MAPS = 2_000_000;
    const flipsAtStart = Atomics.load(ctl, C.FLIP_COUNT);
    const statuses = new Map<string, number>();
    let pinBitsLost = 0;
    let maps = 0;
    for (; maps < MIN_MAPS || Atomics.load(ctl, C.FLIP_COUNT) - flipsAtStart < FLIPS; maps++) {
      if (maps === MAX_MAPS) {
        t.fail('the flipper stalled');
        break;
      }
      const i = maps;
      const ro = (i & 1) === 1;
      const r = mapper.map({ dom: C.GUEST_DOMID, ref, flags: GNTMAP_host_map | (ro ? GNTMAP_readonly : 0) });
      statuses.set(gntstName(r.status), (statuses.get(gntstName(r.status)) ?? 0) + 1);
      if (r.status === GNTST_okay) {
        const want = ro ? GTF_reading : GTF_reading | GTF_writing;
        if ((table.entries.flags(ref) & want) !== want) pinBitsLost++;
        t.is(mapper.unmap(r.handle), GNTST_okay);
      } else {
        t.is(r.status, GNTST_general_error);
      }
    }
    C.publish(ctl, C.FLIP_STOP, 1);
    await waitFor(ctl, C.FLIP_DONE, 1);
    const s = mapper.stats();
    t.true(s.cmpxchgAttempts <= GNTTAB_CMPXCHG_ATTEMPTS * maps, 'every map gave up within the bound');
    t.true(s.cmpxchgAttempts >= maps - (statuses.get('GNTST_general_error') ?? 0));
    t.is(s.liveHandles, 0);
    if (mode === 'xor') {
      t.is(pinBitsLost, 0, 'flipping other bits never loses our pin bits');
      t.is(table.entries.flags(ref) & (GTF_reading | GTF_writing), 0, 'the last unmap cleared the pin bits');
    }
    t.log(`${mode}: ${maps} maps during ${Atomics.load(ctl, C.FLIP_COUNT) - flipsAtStart} flips; ${JSON.stringify(Object.fromEntries(statuses))}; ${s.cmpxchgAttempts} cmpxchg, ${s.unstable} unstable`);
  });
}

test('deferred revoke against a worker holding the map: refused, retried every second, warned at 60, freed after unmap', async (t) => {
  const g = guest(10);
  const { table, ctl, clock, logs } = g;
  startBackend(t, g, 'hold');
  const ref = table.grantForeignAccess(C.BACKEND_DOMID, 2, false);
  t.is(ref, 8);
  Atomics.store(ctl, C.CTL_REF, ref);
  C.publish(ctl, C.CTL_ROUND, 1);
  await waitFor(ctl, C.CTL_HELD, 1);
  t.is(Atomics.load(ctl, C.CTL_ERROR), 0);

  table.endForeignAccess(ref);
  t.deepEqual(logs, [
    ['warn', 'WARNING: g.e. 0x8 still in use!'],
    ['debug', 'deferring g.e. 0x8 (pfn 0x2)'],
  ]);
  t.deepEqual(table.query().deferred, [{ ref, tries: 0 }]);
  t.is(table.grantForeignAccess(C.BACKEND_DOMID, 1, false), 9);
  t.is(table.grantForeignAccess(C.BACKEND_DOMID, 1, false), -ENOSPC, 'the deferred ref is not handed out');
  for (let s = 1; s <= 59; s++) clock.advance(1000);
  t.deepEqual(table.query().deferred, [{ ref, tries: 59 }]);
  t.false(logs.some(([, m]) => m.endsWith('still pending')));
  clock.advance(1000);
  t.deepEqual(logs.at(-1), ['warn', 'g.e. 0x8 still pending']);
  clock.advance(5000);
  t.is(logs.filter(([, m]) => m.endsWith('still pending')).length, 1);
  t.is(table.entries.flags(ref), GTF_permit_access | GTF_reading | GTF_writing);

  C.publish(ctl, C.CTL_GO, 1);
  await waitFor(ctl, C.CTL_DONE, 1);
  t.is(table.entries.flags(ref), GTF_permit_access, 'the worker\'s unmap cleared the pin bits');
  t.deepEqual(table.query().deferred, [{ ref, tries: 65 }], 'freed by the timer, not by the unmap');
  clock.advance(1000);
  t.deepEqual(logs.at(-1), ['debug', 'freeing g.e. 0x8']);
  t.deepEqual(table.query().deferred, []);
  t.is(table.entries.flags(ref), 0);
  t.is(clock.nextDeadline(), Infinity);
  t.is(table.grantForeignAccess(C.BACKEND_DOMID, 3, true), ref, 'the ref is reusable once freed');
});
