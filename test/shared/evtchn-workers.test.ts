import test, { type ExecutionContext } from 'ava';
import { Worker } from 'node:worker_threads';
import {
  EvtchnHost,
  WAIT_STEP_ARMED,
  WAIT_STEP_CHECKED,
  WAIT_STEP_FLAGGED,
  WAIT_STEP_SPUN,
  kSleeping,
  type EvtchnCounters,
} from '../../shared/evtchn.js';
import type { Result } from '../../shared/result.js';
import type { PingPongData } from './fixtures/evtchn-pingpong.js';
import type { FloodData } from './fixtures/evtchn-flood.js';
import type { GatedData } from './fixtures/evtchn-gated-waiter.js';
import type { KeepAliveData } from './fixtures/evtchn-keepalive.js';

// A timeout far longer than any round trip: a lost wake-up shows up as this timeout, never as a slow pass.
const LOST_WAKEUP_MS = 10_000;

function unwrap<T>(r: Result<T>): T {
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

/** Starts a fixture worker (terminated at teardown) and resolves with its first message, or rejects on exit. */
function run<T>(t: ExecutionContext, fixture: string, data: unknown): { worker: Worker; result: Promise<T> } {
  const worker = new Worker(new URL(`./fixtures/${fixture}.js`, import.meta.url), { workerData: data });
  t.teardown(() => worker.terminate());
  const result = new Promise<T>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`${fixture} exited with ${code} before answering`)));
  });
  return { worker, result };
}

/** Domains 0 and 1 joined by one channel (0 binds to 1's unbound port), bind fix-up drained. */
function pair() {
  const host = EvtchnHost.create({ maxDomains: 2, nrPorts: 64 });
  const pb = unwrap(host.allocUnbound(1, 0));
  const pa = unwrap(host.bindInterdomain(0, 1, pb));
  host.domain(0).poll(new Uint32Array(64));
  return { host, pa, pb };
}

/** Drains whatever is still pending and checks the counters of one receiving domain add up. */
function checkReceiver(t: ExecutionContext, host: EvtchnHost, domid: number, sentToIt: number, fixups: number): EvtchnCounters {
  const dom = host.domain(domid);
  while (dom.poll(new Uint32Array(64)) > 0);
  const c = dom.counters();
  t.is(c.raised, sentToIt + fixups, 'every notify sent to the domain raised one of its ports');
  t.is(c.raised, c.taken + c.suppressedPending, 'sent = taken + suppressed (already pending)');
  t.is(c.raised + c.unmaskRaised, c.suppressedPending + c.suppressedMasked + c.coalesced + c.upcalls);
  t.true(c.kicks <= c.upcalls, 'at most one kick per upcall');
  t.true(c.wakeups <= c.kicks, 'every wake-up was a kick');
  return c;
}

for (const [mode, spin, rounds] of [
  ['sync', 0, 3000],
  ['sync', 3000, 3000],
  ['async', 0, 1500],
] as const) {
  test(`ping-pong over ${rounds} rounds (${mode}, spin ${spin}): no lost wake-up, counters add up`, async (t) => {
    const { host, pa, pb } = pair();
    const cells = new SharedArrayBuffer(8);
    const base = { buffer: host.buffer, cells, mode, rounds, spin, timeoutMs: LOST_WAKEUP_MS };
    const ping = run<{ error: string | null; rounds: number }>(t, 'evtchn-pingpong', {
      ...base,
      domid: 0,
      port: pa,
      role: 'ping',
    } satisfies PingPongData);
    const pong = run<{ error: string | null; rounds: number }>(t, 'evtchn-pingpong', {
      ...base,
      domid: 1,
      port: pb,
      role: 'pong',
    } satisfies PingPongData);
    const [a, b] = await Promise.all([ping.result, pong.result]);
    t.is(a.error, null);
    t.is(b.error, null);
    t.is(host.domain(0).counters().sent, rounds);
    t.is(host.domain(1).counters().sent, rounds);
    const ca = checkReceiver(t, host, 0, rounds, 1); // 1: the bind fix-up
    const cb = checkReceiver(t, host, 1, rounds, 0);
    if (spin === 0) {
      // Without a spin each side sleeps while the other works: the kick path must have carried the run.
      t.true(cb.kicks > 0 && cb.wakeups > 0, `pong kicks ${cb.kicks} wakeups ${cb.wakeups}`);
      t.true(ca.kicks > 0 && ca.wakeups > 0, `ping kicks ${ca.kicks} wakeups ${ca.wakeups}`);
    }
    t.is(ca.timeouts + cb.timeouts, 0);
  });
}

test('flood: a sender far faster than the sleeping receiver coalesces, and the final notify is never lost', async (t) => {
  const { host, pa, pb } = pair();
  const cells = new SharedArrayBuffer(4);
  const count = 20_000;
  const base = { buffer: host.buffer, cells, count, timeoutMs: LOST_WAKEUP_MS };
  const sink = run<{ error: string | null; handled: number }>(t, 'evtchn-flood', {
    ...base,
    domid: 1,
    port: pb,
    role: 'sink',
  } satisfies FloodData);
  const send = run<{ error: string | null; handled: number }>(t, 'evtchn-flood', {
    ...base,
    domid: 0,
    port: pa,
    role: 'send',
  } satisfies FloodData);
  const [s, r] = await Promise.all([send.result, sink.result]);
  t.is(s.error, null);
  t.is(r.error, null);
  t.is(host.domain(0).counters().sent, count + 1);
  const c = checkReceiver(t, host, 1, count + 1, 0);
  t.true(c.suppressedPending > 0, 'notifies while pending were coalesced');
  t.true(r.handled < count + 1);
});

for (const step of [WAIT_STEP_SPUN, WAIT_STEP_FLAGGED, WAIT_STEP_ARMED, WAIT_STEP_CHECKED]) {
  test(`two threads: a notify forced in at sleep-protocol step ${step} still ends the wait at once`, async (t) => {
    const { host, pa } = pair();
    const gate = new SharedArrayBuffer(8);
    const g = new Int32Array(gate);
    const waiter = run<string>(t, 'evtchn-gated-waiter', {
      buffer: host.buffer,
      gate,
      domid: 1,
      step,
      timeoutMs: LOST_WAKEUP_MS,
    } satisfies GatedData);
    const reached = Atomics.waitAsync(g, 0, 0);
    if (reached.async) await reached.value;
    t.is(host.domain(0).notify(pa), 0);
    Atomics.store(g, 1, 1);
    Atomics.notify(g, 1);
    t.is(await waiter.result, 'ready');
    t.is(host.domain(1).counters().kicks, step === WAIT_STEP_SPUN ? 0 : 1);
    t.is(host.domain(1).counters().timeouts, 0);
  });
}

/** Resolves with the messages a worker posted once it exits, or rejects after a deadline (it did not exit). */
function messagesUntilExit(t: ExecutionContext, data: KeepAliveData, onMessage: (m: string) => void) {
  const worker = new Worker(new URL('./fixtures/evtchn-keepalive.js', import.meta.url), { workerData: data });
  t.teardown(() => worker.terminate());
  const messages: string[] = [];
  return new Promise<string[]>((resolve, reject) => {
    const deadline = setTimeout(() => reject(new Error(`worker still alive, messages ${messages.join(',')}`)), 5000);
    worker.on('message', (m: string) => {
      messages.push(m);
      onMessage(m);
    });
    worker.once('error', reject);
    worker.once('exit', () => {
      clearTimeout(deadline);
      resolve(messages);
    });
  });
}

test('waitAsync without keepAlive lets an otherwise idle worker exit while it waits', async (t) => {
  const { host } = pair();
  const messages = await messagesUntilExit(t, { buffer: host.buffer, domid: 1, keepAlive: false }, () => {});
  t.deepEqual(messages, ['armed +']); // nothing holds the event loop
  // It died asleep: its flag stays set, so senders keep paying kicks for it (the caller chose this).
  t.is(Atomics.load(host.i32, host.pageBase(1) + kSleeping), 1);
});

test('waitAsync with keepAlive holds the worker until the kick, then lets it exit', async (t) => {
  const { host, pa } = pair();
  const messages = await messagesUntilExit(t, { buffer: host.buffer, domid: 1, keepAlive: true }, (m) => {
    if (m.startsWith('armed')) t.is(host.domain(0).notify(pa), 0);
  });
  t.deepEqual(messages, ['armed +Timeout', 'woken']); // the ref'd handle held the loop until the kick
  t.is(host.domain(1).counters().kicks, 1);
  t.is(host.domain(1).counters().wakeups, 1);
});
