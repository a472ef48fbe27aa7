import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import {
  EVTCHN_HEADER_BYTES,
  EVTCHNSTAT_closed,
  EVTCHNSTAT_interdomain,
  EVTCHNSTAT_unbound,
  EvtchnDomain,
  EvtchnHost,
  SchedulerWaker,
  SimScheduler,
  WAIT_STEP_ARMED,
  WAIT_STEP_CHECKED,
  WAIT_STEP_FLAGGED,
  WAIT_STEP_SPUN,
  XEN_EINVAL,
  XEN_ENOTCONN,
  evtchnBufferBytes,
  evtchnPageWords,
  kHdrMagic,
  kHdrMaxDomains,
  kHdrNrPorts,
  kSleeping,
  kTaken,
  kWake,
  type EvtchnCounters,
  type Waker,
} from '../../shared/evtchn.js';
import { Random } from '../../shared/random.js';
import type { Result } from '../../shared/result.js';

function unwrap<T>(r: Result<T>): T {
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

/** Two domains, one interdomain channel a:pa <-> b:pb, bind fix-up drained. */
function pair(nrPorts = 64, waker?: Waker) {
  const host = EvtchnHost.create(waker === undefined ? { maxDomains: 2, nrPorts } : { maxDomains: 2, nrPorts, waker });
  const a = host.domain(0);
  const b = host.domain(1);
  const pb = unwrap(b.allocUnbound(0));
  const pa = unwrap(a.bindInterdomain(1, pb));
  a.poll(new Uint32Array(nrPorts));
  return { host, a, b, pa, pb };
}

/** The counters' own bookkeeping: every raise (or unmask re-raise) ends in exactly one of four outcomes. */
function raiseOutcomesAddUp(c: EvtchnCounters): boolean {
  return c.raised + c.unmaskRaised === c.suppressedPending + c.suppressedMasked + c.coalesced + c.upcalls;
}

// ---- layout and attach -----------------------------------------------------------------------------------

testProp(
  'domain pages do not overlap: masking and allocating every port of one domain leaves the others untouched',
  [fc.integer({ min: 1, max: 5 }), fc.integer({ min: 1, max: 32 }).map((k) => k * 32), fc.nat()],
  (t, maxDomains, nrPorts, pick) => {
    const host = EvtchnHost.create({ maxDomains, nrPorts });
    const d = pick % maxDomains;
    const dom = host.domain(d);
    for (let p = 0; p < nrPorts; p++) dom.mask(p);
    for (let p = 1; p < nrPorts; p++) t.true(dom.allocUnbound(d).ok);
    for (let o = 0; o < maxDomains; o++) {
      if (o === d) continue;
      const other = host.domain(o);
      for (let p = 0; p < nrPorts; p++) {
        t.false(other.isMasked(p));
        t.is(unwrap(host.status(o, p)).status, EVTCHNSTAT_closed);
      }
    }
    // The last page ends inside the buffer and pages are whole cache lines.
    t.is(evtchnPageWords(nrPorts) % 16, 0);
    t.true(evtchnPageWords(nrPorts) >= 32 + 2 * (nrPorts / 32) + nrPorts);
    t.is(host.buffer.byteLength, evtchnBufferBytes(maxDomains, nrPorts));
  },
);

test('create rejects bad options with exact messages', (t) => {
  const cases: [number, number, string][] = [
    [0, 64, 'options.maxDomains must be an integer in 1..32752'],
    [1.5, 64, 'options.maxDomains must be an integer in 1..32752'],
    [0x7ff1, 64, 'options.maxDomains must be an integer in 1..32752'],
    [2, 0, 'options.nrPorts must be a multiple of 32 in 32..1024'],
    [2, 33, 'options.nrPorts must be a multiple of 32 in 32..1024'],
    [2, 1056, 'options.nrPorts must be a multiple of 32 in 32..1024'],
  ];
  for (const [maxDomains, nrPorts, message] of cases) {
    t.throws(() => EvtchnHost.create({ maxDomains, nrPorts }), { instanceOf: RangeError, message });
  }
});

test('attach sees the same geometry and state as the creator', (t) => {
  const { host, b, pb } = pair(96);
  const other = unwrap(EvtchnHost.attach(host.buffer));
  t.is(other.maxDomains, 2);
  t.is(other.nrPorts, 96);
  t.is(other.domain(0).notify(unwrap(other.status(1, pb)).remotePort), 0);
  t.true(b.isPending(pb));
});

test('attach rejects corrupt buffers with exact messages', (t) => {
  const good = EvtchnHost.create({ maxDomains: 3, nrPorts: 64 }).buffer;
  const withHeader = (f: (h: Int32Array) => void): SharedArrayBuffer => {
    const copy = new SharedArrayBuffer(good.byteLength);
    new Uint8Array(copy).set(new Uint8Array(good));
    f(new Int32Array(copy));
    return copy;
  };
  const cases: [SharedArrayBuffer, string][] = [
    [new ArrayBuffer(4096) as unknown as SharedArrayBuffer, 'buffer is not a SharedArrayBuffer'],
    [new SharedArrayBuffer(10), 'buffer is too small: expected at least 64 bytes but got 10'],
    [withHeader((h) => (h[kHdrMagic] = 0x1234)), 'magic is corrupt: expected 0x45565443 but got 0x1234'],
    [withHeader((h) => (h[kHdrMagic] = -1)), 'magic is corrupt: expected 0x45565443 but got 0xffffffff'],
    [withHeader((h) => (h[kHdrMaxDomains] = 0)), 'maxDomains is corrupt: expected 1 <= x <= 32752 but got 0'],
    [withHeader((h) => (h[kHdrMaxDomains] = -7)), 'maxDomains is corrupt: expected 1 <= x <= 32752 but got -7'],
    [withHeader((h) => (h[kHdrNrPorts] = 1000)), 'nrPorts is corrupt: expected a multiple of 32 in 32..1024 but got 1000'],
    [withHeader((h) => (h[kHdrNrPorts] = 2048)), 'nrPorts is corrupt: expected a multiple of 32 in 32..1024 but got 2048'],
    [
      withHeader((h) => (h[kHdrMaxDomains] = 4)),
      `buffer is too small: expected ${evtchnBufferBytes(4, 64)} bytes but got ${evtchnBufferBytes(3, 64)}`,
    ],
  ];
  for (const [buf, message] of cases) t.deepEqual(EvtchnHost.attach(buf), { ok: false, error: message });
  t.is(EVTCHN_HEADER_BYTES % 64, 0);
});

// ---- toolstack operations ---------------------------------------------------------------------------------

test('alloc_unbound hands out the lowest free port from 1, and close makes it reusable', (t) => {
  const host = EvtchnHost.create({ maxDomains: 2, nrPorts: 32 });
  t.deepEqual(host.allocUnbound(0, 1), { ok: true, value: 1 });
  t.deepEqual(host.allocUnbound(0, 1), { ok: true, value: 2 });
  t.deepEqual(host.allocUnbound(0, 0), { ok: true, value: 3 });
  t.deepEqual(host.close(0, 2), { ok: true, value: undefined });
  t.deepEqual(host.allocUnbound(0, 1), { ok: true, value: 2 });
  for (let p = 4; p < 32; p++) t.deepEqual(host.allocUnbound(0, 1), { ok: true, value: p });
  t.deepEqual(host.allocUnbound(0, 1), { ok: false, error: 'no free port in domain 0' });
  t.deepEqual(host.bindInterdomain(1, 0, 1), { ok: true, value: 1 });
  t.deepEqual(host.bindInterdomain(0, 1, 1), { ok: false, error: 'port 1 of domain 1 is interdomain: expected unbound' });
});

test('control operations reject bad arguments with exact messages', (t) => {
  const { host, pa, pb } = pair(64);
  const spare = unwrap(host.allocUnbound(1, 1)); // domain 1 accepts only itself
  const cases: [Result<unknown>, string][] = [
    [host.allocUnbound(2, 0), 'domain 2 does not exist: expected 0 <= domid < 2'],
    [host.allocUnbound(0, -1), 'domain -1 does not exist: expected 0 <= domid < 2'],
    [host.allocUnbound(0.5, 0), 'domain 0.5 does not exist: expected 0 <= domid < 2'],
    [host.bindInterdomain(0, 1, 64), 'port 64 is invalid: expected 0 <= port < 64'],
    [host.bindInterdomain(0, 1, -1), 'port -1 is invalid: expected 0 <= port < 64'],
    [host.bindInterdomain(0, 1, 0), 'port 0 of domain 1 is reserved: expected unbound'],
    [host.bindInterdomain(0, 1, 40), 'port 40 of domain 1 is closed: expected unbound'],
    [host.bindInterdomain(0, 1, pb), `port ${pb} of domain 1 is interdomain: expected unbound`],
    [host.bindInterdomain(0, 1, spare), `port ${spare} of domain 1 accepts domain 1, not domain 0`],
    [host.bindInterdomain(0, 7, 1), 'domain 7 does not exist: expected 0 <= domid < 2'],
    [host.close(0, 0), 'port 0 of domain 0 is reserved: expected unbound or interdomain'],
    [host.close(0, 40), 'port 40 of domain 0 is closed: expected unbound or interdomain'],
    [host.close(0, 1.5), 'port 1.5 is invalid: expected 0 <= port < 64'],
    [host.close(3, pa), 'domain 3 does not exist: expected 0 <= domid < 2'],
    [host.status(0, 99), 'port 99 is invalid: expected 0 <= port < 64'],
  ];
  for (const [r, error] of cases) t.deepEqual(r, { ok: false, error });
  t.throws(() => host.domain(2), { instanceOf: RangeError, message: 'domain 2 does not exist: expected 0 <= domid < 2' });
});

test('status reports unbound, interdomain (both directions) and closed ports', (t) => {
  const { host, pa, pb } = pair(64);
  const u = unwrap(host.allocUnbound(0, 1));
  t.deepEqual(unwrap(host.status(0, u)), { status: EVTCHNSTAT_unbound, remoteDom: 1, remotePort: -1 });
  t.deepEqual(unwrap(host.status(0, pa)), { status: EVTCHNSTAT_interdomain, remoteDom: 1, remotePort: pb });
  t.deepEqual(unwrap(host.status(1, pb)), { status: EVTCHNSTAT_interdomain, remoteDom: 0, remotePort: pa });
  t.deepEqual(unwrap(host.status(0, 0)), { status: EVTCHNSTAT_closed, remoteDom: -1, remotePort: -1 });
  t.deepEqual(unwrap(host.status(0, 63)), { status: EVTCHNSTAT_closed, remoteDom: -1, remotePort: -1 });
});

test('status reports a corrupt port word instead of trusting it', (t) => {
  const { host, pa } = pair(64);
  Atomics.store(host.i32, host.portWord(0, pa), 0x7);
  t.deepEqual(host.status(0, pa), { ok: false, error: `port ${pa} of domain 0 is corrupt: state 7` });
  t.deepEqual(host.close(0, pa), {
    ok: false,
    error: `port ${pa} of domain 0 is corrupt (state 7): expected unbound or interdomain`,
  });
});

test('bind_interdomain marks the new local port pending, as Xen does for notifications lost before binding', (t) => {
  const host = EvtchnHost.create({ maxDomains: 2, nrPorts: 64 });
  const a = host.domain(0);
  const pb = unwrap(host.allocUnbound(1, 0));
  t.is(host.domain(1).notify(pb), -XEN_ENOTCONN); // the peer notified too early: dropped
  const pa = unwrap(host.bindInterdomain(0, 1, pb));
  t.true(a.isPending(pa));
  t.true(a.hasEvents());
  const out = new Uint32Array(4);
  t.is(a.poll(out), 1);
  t.is(out[0], pa);
  t.is(a.counters().raised, 1);
});

test('close: the peer goes back to unbound for the closer, pending is cleared, and the closer can re-bind', (t) => {
  const { host, a, b, pa, pb } = pair(64);
  t.is(b.notify(pb), 0);
  t.true(a.isPending(pa));
  t.deepEqual(a.close(pa), { ok: true, value: undefined });
  t.false(a.isPending(pa));
  t.deepEqual(unwrap(host.status(1, pb)), { status: EVTCHNSTAT_unbound, remoteDom: 0, remotePort: -1 });
  t.is(b.notify(pb), -XEN_ENOTCONN);
  t.is(a.notify(pa), -XEN_EINVAL);
  const again = unwrap(a.bindInterdomain(1, pb));
  t.is(b.notify(pb), 0);
  t.true(a.isPending(again));
  t.deepEqual(unwrap(host.status(1, pb)), { status: EVTCHNSTAT_interdomain, remoteDom: 0, remotePort: again });
});

test('close of both ends leaves both free', (t) => {
  const { host, a, b, pa, pb } = pair(64);
  t.true(b.close(pb).ok);
  t.deepEqual(unwrap(host.status(0, pa)).status, EVTCHNSTAT_unbound);
  t.true(a.close(pa).ok);
  t.is(unwrap(host.status(0, pa)).status, EVTCHNSTAT_closed);
  t.is(unwrap(host.status(1, pb)).status, EVTCHNSTAT_closed);
});

// ---- notify statuses --------------------------------------------------------------------------------------

test('notify answers error statuses for bad, reserved, closed and unbound ports, and never throws', (t) => {
  const { host, a, b, pa, pb } = pair(64);
  const unbound = unwrap(a.allocUnbound(1));
  const cases: [number, number][] = [
    [-1, -XEN_EINVAL],
    [64, -XEN_EINVAL],
    [1.5, -XEN_EINVAL],
    [Number.NaN, -XEN_EINVAL],
    [2 ** 32 + pa, -XEN_EINVAL],
    [0, -XEN_EINVAL],
    [50, -XEN_EINVAL],
    [unbound, -XEN_ENOTCONN],
  ];
  for (const [port, status] of cases) t.is(a.notify(port), status, `port ${port}`);
  t.is(b.counters().raised, 0);
  t.is(a.counters().sendErrors, cases.length);
  t.is(a.counters().sent, 0);
  // A port word scribbled to point outside the buffer is refused, not followed.
  Atomics.store(host.i32, host.portWord(0, pa), (9 << 16) | (pb << 4) | 3);
  t.is(a.notify(pa), -XEN_EINVAL);
  Atomics.store(host.i32, host.portWord(0, pa), (1 << 16) | (4000 << 4) | 3);
  t.is(a.notify(pa), -XEN_EINVAL);
  t.is(b.counters().raised, 0);
});

test('notify raises the bound remote port, through an EventPort too', (t) => {
  const { a, b, pa, pb } = pair(64);
  const port = a.port(pa);
  t.is(port.port, pa);
  t.is(port.notify(), 0);
  t.true(b.isPending(pb));
  t.false(a.isPending(pa));
  t.is(a.counters().sent, 1);
  t.is(b.counters().raised, 1);
  t.is(b.counters().upcalls, 1);
});

// ---- coalescing, masking, unmask re-raise --------------------------------------------------------------------

testProp('many notifies while pending make one upcall and one polled port', [fc.integer({ min: 1, max: 200 })], (t, n) => {
  const { a, b, pa, pb } = pair(64);
  const wake0 = Atomics.load(b.host.i32, b.host.pageBase(1) + kWake);
  for (let i = 0; i < n; i++) t.is(a.notify(pa), 0);
  t.is(Atomics.load(b.host.i32, b.host.pageBase(1) + kWake) - wake0, 1);
  const c = b.counters();
  t.is(c.raised, n);
  t.is(c.suppressedPending, n - 1);
  t.is(c.upcalls, 1);
  const out = new Uint32Array(8);
  t.is(b.poll(out), 1);
  t.is(out[0], pb);
  t.is(b.poll(out), 0);
  t.is(a.counters().sent, n);
});

test('other ports becoming pending while an upcall is due are coalesced, in the same word or not', (t) => {
  const host = EvtchnHost.create({ maxDomains: 2, nrPorts: 128 });
  const b = host.domain(1);
  for (let p = 1; p < 100; p++) unwrap(b.allocUnbound(0));
  const sends = [1, 2, 33, 97].map((pb) => unwrap(host.bindInterdomain(0, 1, pb))); // words 0, 0, 1, 3
  host.domain(0).poll(new Uint32Array(128));
  for (const p of sends) host.domain(0).notify(p);
  const c = b.counters();
  t.is(c.upcalls, 1);
  t.is(c.coalesced, 3);
  t.true(raiseOutcomesAddUp(c));
  const out = new Uint32Array(8);
  t.is(b.poll(out), 4);
  t.deepEqual([...out.subarray(0, 4)], [1, 2, 33, 97]);
});

test('a masked port becomes pending without an upcall; unmask re-raises it (evtchn_2l_unmask)', (t) => {
  const { a, b, pa, pb } = pair(64);
  t.is(b.mask(pb), 0);
  t.true(b.isMasked(pb));
  t.is(a.notify(pa), 0);
  t.true(b.isPending(pb));
  t.false(b.hasEvents());
  const out = new Uint32Array(8);
  t.is(b.poll(out), 0);
  t.is(b.counters().suppressedMasked, 1);
  t.is(b.counters().upcalls, 0);
  t.is(b.unmask(pb), 0);
  t.false(b.isMasked(pb));
  t.true(b.hasEvents());
  t.is(b.poll(out), 1);
  t.is(out[0], pb);
  t.is(b.counters().unmaskRaised, 1);
  t.is(b.counters().upcalls, 1);
});

test('unmask raises nothing when the port is not pending, or was not masked', (t) => {
  const { a, b, pa, pb } = pair(64);
  b.mask(pb);
  t.is(b.unmask(pb), 0);
  t.false(b.hasEvents());
  a.notify(pa);
  b.poll(new Uint32Array(4));
  a.notify(pa); // pending, upcall due, not masked
  b.poll(new Uint32Array(0)); // takes nothing: upcall stays due
  t.is(b.unmask(pb), 0);
  t.is(b.counters().unmaskRaised, 0);
  t.is(b.mask(64), -XEN_EINVAL);
  t.is(b.unmask(-1), -XEN_EINVAL);
});

test('poll leaves masked ports pending and takes the others of the same word', (t) => {
  const host = EvtchnHost.create({ maxDomains: 2, nrPorts: 64 });
  const b = host.domain(1);
  const sends: number[] = [];
  const recv: number[] = [];
  for (let i = 0; i < 4; i++) {
    const pb = unwrap(b.allocUnbound(0));
    recv.push(pb);
    sends.push(unwrap(host.bindInterdomain(0, 1, pb)));
  }
  host.domain(0).poll(new Uint32Array(64));
  b.mask(recv[1]!);
  for (const p of sends) host.domain(0).notify(p);
  const out = new Uint32Array(8);
  t.is(b.poll(out), 3);
  t.deepEqual([...out.subarray(0, 3)], [recv[0], recv[2], recv[3]]);
  t.true(b.isPending(recv[1]!));
  b.unmask(recv[1]!);
  t.is(b.poll(out), 1);
  t.is(out[0], recv[1]);
});

// ---- poll against a model --------------------------------------------------------------------------------

type Op =
  | { kind: 'notify'; from: 0 | 1; ch: number }
  | { kind: 'mask' | 'unmask'; dom: 0 | 1; ch: number }
  | { kind: 'poll'; dom: 0 | 1; cap: number };

const opArb = (channels: number): fc.Arbitrary<Op> =>
  fc.oneof(
    {
      weight: 5,
      arbitrary: fc.record({ kind: fc.constant('notify' as const), from: fc.constantFrom(0 as const, 1 as const), ch: fc.nat(channels - 1) }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constantFrom('mask' as const, 'unmask' as const),
        dom: fc.constantFrom(0 as const, 1 as const),
        ch: fc.nat(channels - 1),
      }),
    },
    {
      weight: 3,
      arbitrary: fc.record({ kind: fc.constant('poll' as const), dom: fc.constantFrom(0 as const, 1 as const), cap: fc.nat(40) }),
    },
  );

testProp(
  'poll hands out exactly the lowest unmasked pending ports; nothing unmasked is ever stranded; counters add up',
  [fc.integer({ min: 1, max: 70 }), fc.array(opArb(70), { maxLength: 300 })],
  (t, channels, rawOps) => {
    const nrPorts = 160; // several selector words, channels spread over them
    const host = EvtchnHost.create({ maxDomains: 2, nrPorts });
    const doms = [host.domain(0), host.domain(1)] as const;
    const ends: [number[], number[]] = [[], []]; // ends[d][ch] = port of channel ch in domain d
    for (let ch = 0; ch < channels; ch++) {
      // Scatter channel ports across the words: burn a few ports of domain 1 first.
      if (ch % 3 === 0) unwrap(host.allocUnbound(1, 1));
      const pb = unwrap(host.allocUnbound(1, 0));
      ends[1].push(pb);
      ends[0].push(unwrap(host.bindInterdomain(0, 1, pb)));
    }
    const pending = [new Set<number>(ends[0]), new Set<number>()]; // bind fix-ups
    const masked = [new Set<number>(), new Set<number>()];
    const binds = channels;
    for (const op of rawOps) {
      if (op.kind === 'notify' && op.ch < channels) {
        const to = 1 - op.from;
        t.is(doms[op.from].notify(ends[op.from][op.ch]!), 0);
        pending[to]!.add(ends[to]![op.ch]!);
      } else if ((op.kind === 'mask' || op.kind === 'unmask') && op.ch < channels) {
        const port = ends[op.dom][op.ch]!;
        if (op.kind === 'mask') {
          doms[op.dom].mask(port);
          masked[op.dom]!.add(port);
        } else {
          doms[op.dom].unmask(port);
          masked[op.dom]!.delete(port);
        }
      } else if (op.kind === 'poll') {
        const out = new Uint32Array(op.cap + 2).fill(0xdeadbeef);
        const n = doms[op.dom].poll(out.subarray(0, op.cap));
        const expected = [...pending[op.dom]!].filter((p) => !masked[op.dom]!.has(p)).sort((x, y) => x - y).slice(0, op.cap);
        t.deepEqual([...out.subarray(0, n)], expected);
        for (let i = n; i < out.length; i++) t.is(out[i], 0xdeadbeef);
        for (const p of expected) pending[op.dom]!.delete(p);
      }
      for (const d of [0, 1] as const) {
        t.deepEqual(
          ends[d].filter((p) => doms[d].isPending(p)),
          ends[d].filter((p) => pending[d]!.has(p)),
        );
        const deliverable = [...pending[d]!].some((p) => !masked[d]!.has(p));
        if (deliverable) t.true(doms[d].hasEvents(), 'an unmasked pending port has its upcall due');
        t.true(raiseOutcomesAddUp(doms[d].counters()));
      }
    }
    // Drain everything: every raise was either taken once or coalesced into a pending one.
    const out = new Uint32Array(nrPorts);
    for (const d of [0, 1] as const) {
      for (const p of ends[d]) doms[d].unmask(p);
      while (doms[d].poll(out) > 0);
      const c = doms[d].counters();
      t.is(c.raised, c.taken + c.suppressedPending);
      t.is(doms[1 - d]!.counters().sent, c.raised - (d === 0 ? binds : 0));
      t.false(doms[d].hasEvents());
    }
  },
);

// ---- the sleep protocol ------------------------------------------------------------------------------------

/** A domain whose sleep protocol runs a given action at one step, once (the forced interleaving). */
class SteppedDomain extends EvtchnDomain {
  at = -1;
  action: () => void = () => {};
  readonly seen: number[] = [];

  protected override waitStep(step: number): void {
    this.seen.push(step);
    if (step === this.at) {
      this.at = -1;
      this.action();
    }
  }
}

const STEPS = [WAIT_STEP_SPUN, WAIT_STEP_FLAGGED, WAIT_STEP_ARMED, WAIT_STEP_CHECKED];

test('wait does not lose a wake-up that lands at any step of the sleep protocol (the re-check)', (t) => {
  for (const step of STEPS) {
    const { host, a, pa, pb } = pair(64);
    const waiter = new SteppedDomain(host, 1);
    waiter.spin = 0;
    waiter.at = step;
    waiter.action = () => t.is(a.notify(pa), 0);
    // A lost wake-up sleeps the whole timeout: this notify is the only one, later ones would coalesce.
    const r = waiter.wait(2000);
    t.is(r, 'ready', `notify at step ${step}`);
    // Before the flag is set the sender must not pay a kick; from then on it must.
    t.is(waiter.counters().kicks, step === WAIT_STEP_SPUN ? 0 : 1, `kicks at step ${step}`);
    t.is(waiter.counters().timeouts, 0);
    const out = new Uint32Array(4);
    t.is(waiter.poll(out), 1);
    t.is(out[0], pb);
    t.is(Atomics.load(host.i32, host.pageBase(1) + kSleeping), 0, 'sleeping flag cleared');
  }
});

test('waitAsync does not lose a wake-up that lands at any step of the sleep protocol', async (t) => {
  for (const step of STEPS) {
    const { host, a, pa } = pair(64);
    const waiter = new SteppedDomain(host, 1);
    waiter.spin = 0;
    waiter.at = step;
    waiter.action = () => t.is(a.notify(pa), 0);
    t.is(await waiter.waitAsync(2000), 'ready', `notify at step ${step}`);
    t.is(Atomics.load(host.i32, host.pageBase(1) + kSleeping), 0);
  }
});

test('wait with an upcall due returns ready from the spin, without touching the sleeping flag', (t) => {
  const { host, a, pa } = pair(64);
  const waiter = new SteppedDomain(host, 1);
  a.notify(pa);
  t.is(waiter.wait(0), 'ready');
  t.deepEqual(waiter.seen, []);
  t.is(waiter.counters().pollHits, 1);
});

test('wait times out, counts it, clears the sleeping flag, and a later notify pays no kick', async (t) => {
  const { host, a, b, pa } = pair(64);
  b.spin = 0;
  t.is(b.wait(5), 'timed-out');
  t.is(await b.waitAsync(5), 'timed-out');
  t.is(b.counters().timeouts, 2);
  t.is(Atomics.load(host.i32, host.pageBase(1) + kSleeping), 0);
  a.notify(pa);
  t.is(b.counters().kicks, 0);
});

test('senders kick only a sleeping domain: no Atomics.notify while the receiver is awake', (t) => {
  const { host, a, b, pa } = pair(64);
  const out = new Uint32Array(4);
  for (let i = 0; i < 100; i++) {
    a.notify(pa);
    b.poll(out);
  }
  t.is(b.counters().upcalls, 100);
  t.is(b.counters().kicks, 0);
  Atomics.store(host.i32, host.pageBase(1) + kSleeping, 1); // as a waiter does right before it sleeps
  a.notify(pa);
  t.is(b.counters().kicks, 1);
});

// ---- dispatch and the one-thread seam -----------------------------------------------------------------------

test('dispatch runs bound handlers; an event with no handler stays pending, masked, until bind delivers it', (t) => {
  const { a, b, pa, pb } = pair(64);
  const got: number[] = [];
  a.notify(pa);
  t.is(b.dispatch(), 1);
  t.true(b.isPending(pb));
  t.true(b.isMasked(pb));
  t.is(b.counters().taken, 0);
  t.false(b.hasEvents());
  b.bind(pb, (p) => got.push(p));
  t.false(b.isMasked(pb));
  t.true(b.hasEvents());
  t.is(b.dispatch(), 1);
  t.deepEqual(got, [pb]);
  t.is(b.counters().taken, 1);
  b.unbind(pb);
  t.true(b.isMasked(pb));
  a.notify(pa);
  t.is(b.dispatch(), 0);
  t.deepEqual(got, [pb]);
  t.throws(() => b.bind(64, () => {}), { message: 'port 64 is invalid: expected 0 <= port < 64' });
});

test('one thread: notify queues the peer dispatch on the scheduler once per upcall, handlers ping-pong', (t) => {
  const sched = new SimScheduler();
  const { a, b, pa, pb } = pair(64, new SchedulerWaker(sched));
  t.is(sched.runUntilIdle(), 1); // the bind fix-up's dispatch of domain 0 (already drained by pair)
  const rounds = 100;
  let pings = 0;
  let pongs = 0;
  b.bind(pb, () => {
    pings++;
    b.notify(pb);
  });
  a.bind(pa, () => {
    pongs++;
    if (pongs < rounds) a.notify(pa);
  });
  a.notify(pa);
  a.notify(pa); // coalesced: still one dispatch queued
  t.is(sched.size, 1);
  const ran = sched.runUntilIdle();
  t.is(pings, rounds);
  t.is(pongs, rounds);
  t.is(ran, 2 * rounds);
  t.is(b.counters().kicks, 0);
});

testProp('seeded scheduler: two independent pairs interleave reproducibly and both finish', [fc.integer()], (t, seed) => {
  const trace = (): string => {
    const sched = new SimScheduler(new Random(seed));
    const host = EvtchnHost.create({ maxDomains: 4, nrPorts: 32, waker: new SchedulerWaker(sched) });
    const log: string[] = [];
    for (const [x, y] of [
      [0, 1],
      [2, 3],
    ] as const) {
      const dx = host.domain(x);
      const dy = host.domain(y);
      const py = unwrap(dy.allocUnbound(x));
      const px = unwrap(dx.bindInterdomain(y, py));
      let n = 0;
      dx.bind(px, () => {
        log.push(`${x}`);
        if (++n < 20) dx.notify(px);
      });
      dy.bind(py, () => {
        log.push(`${y}`);
        dy.notify(py);
      });
    }
    sched.runUntilIdle();
    return log.join('');
  };
  const one = trace();
  t.is(one, trace());
  t.is([...one].filter((c) => c === '0').length, 20);
  t.is([...one].filter((c) => c === '2').length, 20);
});

test('SimScheduler runs FIFO without a Random and refuses to spin forever', (t) => {
  const s = new SimScheduler();
  const order: number[] = [];
  s.post(() => order.push(1));
  s.post(() => order.push(2));
  t.true(s.runNext());
  t.deepEqual(order, [1]);
  t.is(s.runUntilIdle(), 1);
  t.false(s.runNext());
  const loop = (): void => s.post(loop);
  s.post(loop);
  t.throws(() => s.runUntilIdle(50), { message: 'scheduler still busy after 50 tasks' });
});

test('counters are readable by index and reject non-counter words', (t) => {
  const { b } = pair(64);
  t.is(b.counter(kTaken), 0);
  t.throws(() => b.counter(kSleeping), { instanceOf: RangeError, message: 'counter index 3 is invalid' });
});
