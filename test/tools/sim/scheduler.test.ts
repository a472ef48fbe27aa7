// The seeded actor scheduler: one interleaving per seed, runnable actors only, killed ones never again, time that
// jumps to the next deadline when nothing happens, event-channel wake-ups, crashes reported, dead domains' timers
// dropped, and every microtask settled within the round.
import test from 'ava';
import { EvtchnHost } from '../../../shared/evtchn.js';
import { Random } from '../../../shared/random.js';
import { ActorScheduler, BUSY_STEP_MS, DomainClock, SimClock, type SimActor } from '../../../tools/sim/scheduler.js';

/** A scripted actor: records its steps, does `work` units while it has any, wants to run at `deadline`. */
class Toy implements SimActor {
  steps: number[] = [];
  work = 0;
  deadline = Infinity;
  onStep: (() => void) | null = null;

  constructor(
    readonly name: string,
    private readonly trace: string[] = [],
  ) {}

  step(now: number): number {
    this.steps.push(now);
    this.trace.push(this.name);
    this.onStep?.();
    if (this.work > 0) {
      this.work--;
      return 1;
    }
    return 0;
  }

  nextDeadline(): number {
    return this.deadline;
  }
}

function sched(seed: number, crashes: string[] = []): ActorScheduler {
  return new ActorScheduler(new SimClock(), new Random(seed), (a, e) => crashes.push(`${a.name}: ${e instanceof Error ? e.message : String(e)}`));
}

async function orders(seed: number, rounds: number): Promise<string[]> {
  const trace: string[] = [];
  const s = sched(seed);
  const toys = ['a', 'b', 'c', 'd', 'e'].map((n) => new Toy(n, trace));
  for (const toy of toys) {
    toy.work = 1000;
    s.add(toy);
  }
  const out: string[] = [];
  for (let r = 0; r < rounds; r++) {
    trace.length = 0;
    await s.round(1e9);
    out.push(trace.join(''));
  }
  return out;
}

test('every runnable actor steps once per round, in an order drawn from the seed: same seed, same interleaving', async (t) => {
  const a = await orders(7, 20);
  t.deepEqual(await orders(7, 20), a);
  for (const o of a) t.deepEqual([...o].sort().join(''), 'abcde');
  t.true(new Set(a).size > 5, 'the order varies from round to round');
  t.notDeepEqual(await orders(8, 20), a, 'another seed, another interleaving');
});

test('a round that did work moves time by BUSY_STEP_MS; an idle one jumps to the next deadline, never past the horizon', async (t) => {
  const s = sched(1);
  const clock = s.clock;
  const toy = new Toy('a');
  toy.work = 1;
  toy.deadline = 250;
  s.add(toy);
  await s.round(1000); // did work
  t.is(clock.now(), BUSY_STEP_MS);
  await s.round(1000); // busy last round: steps again, finds nothing, jumps to its deadline
  t.is(clock.now(), 250);
  await s.round(1000); // due: steps; nothing else is due, so up to the horizon
  t.is(clock.now(), 1000);
  toy.deadline = Infinity;
  let fired = -1;
  clock.schedule(100, () => (fired = clock.now()));
  await s.round(5000); // idle: jumps to the clock timer
  t.is(clock.now(), 1100);
  t.is(fired, 1100);
  await s.round(1400); // nothing left: stops at the horizon
  t.is(clock.now(), 1400);
  t.deepEqual(toy.steps, [0, BUSY_STEP_MS, 250]);
});

test('an actor whose deadline has come but that finds nothing to do does not make time crawl', async (t) => {
  const s = sched(1);
  const stuck = new Toy('stuck');
  stuck.deadline = 0; // always "due", never does anything (a vif with work it cannot do yet)
  const later = new Toy('later');
  later.deadline = 500;
  s.add(stuck);
  s.add(later);
  await s.round(1000);
  t.is(s.clock.now(), 500, 'one idle jump to the real deadline, not BUSY_STEP_MS steps');
  await s.round(1000);
  t.is(s.clock.now(), 1000);
  t.deepEqual(later.steps, [0, 500]);
  t.deepEqual(stuck.steps, [0, 500]);
});

test('stop(): time stands still once the condition holds after the round', async (t) => {
  const s = sched(1);
  s.add(new Toy('a'));
  s.clock.schedule(300, () => {});
  await s.round(1000, undefined, () => true);
  t.is(s.clock.now(), 0);
  let settled = 0;
  await s.round(1000, () => settled++);
  t.is(s.clock.now(), 300);
  t.true(settled >= 1);
});

test('only runnable actors step: woken, busy last round, or due', async (t) => {
  const s = sched(3);
  const idle = new Toy('idle');
  const busy = new Toy('busy');
  s.add(idle);
  s.add(busy);
  await s.round(10); // both are runnable once when added
  busy.work = 2;
  s.wake(busy);
  await s.round(10);
  await s.round(10);
  await s.round(10);
  t.is(idle.steps.length, 1, 'never woken, never due');
  t.is(busy.steps.length, 4, 'woken, then busy twice, then one last step that found nothing');
});

test('a killed actor never steps again, even when an earlier actor of the same round kills it', async (t) => {
  for (let seed = 0; seed < 20; seed++) {
    const s = sched(seed);
    const victim = new Toy('victim');
    const killer = new Toy('killer');
    killer.onStep = () => s.kill(victim);
    victim.work = killer.work = 100;
    s.add(victim);
    s.add(killer);
    await s.round(1e9);
    const before = victim.steps.length;
    t.true(before <= 1);
    for (let i = 0; i < 5; i++) await s.round(1e9);
    t.is(victim.steps.length, before);
    t.false(s.has(victim));
    s.wake(victim);
    await s.round(1e9);
    t.is(victim.steps.length, before, 'waking a dead actor does nothing');
  }
});

test('a crash is reported with the actor and its error; the round goes on with the others', async (t) => {
  const crashes: string[] = [];
  const s = sched(5, crashes);
  const bad = new Toy('bad');
  bad.onStep = () => {
    throw new Error('BUG at netback.c:42');
  };
  const good = new Toy('good');
  s.add(bad);
  s.add(good);
  await s.round(10);
  t.deepEqual(crashes, ['bad: BUG at netback.c:42']);
  t.is(good.steps.length, 1);
});

test('the waker: an event raised on a domain makes the actor bound to it runnable', async (t) => {
  const s = sched(1);
  const host = EvtchnHost.create({ maxDomains: 2, nrPorts: 32, waker: s.waker });
  const d0 = host.domain(0);
  const d1 = host.domain(1);
  const backend = new Toy('backend');
  backend.onStep = () => void d0.dispatch();
  s.add(backend, 0);
  await s.round(10);
  const unbound = d1.allocUnbound(0);
  if (!unbound.ok) throw new Error(unbound.error);
  const bound = d0.bindInterdomain(1, unbound.value);
  if (!bound.ok) throw new Error(bound.error);
  let events = 0;
  d0.bind(bound.value, () => events++);
  await s.round(10); // the bind raised the port (Xen's fix-up): one wake-up
  const n = backend.steps.length;
  await s.round(10);
  t.is(backend.steps.length, n, 'asleep without an event');
  t.is(d1.notify(unbound.value), 0);
  await s.round(10);
  t.is(backend.steps.length, n + 1, 'the notify woke it');
  t.true(events >= 1);
});

test('every microtask queued by a step has run when the round returns (xenstore chains settle within it)', async (t) => {
  const s = sched(1);
  const toy = new Toy('a');
  let hops = 0;
  toy.onStep = () => {
    let p: Promise<void> = Promise.resolve();
    for (let i = 0; i < 1000; i++) p = p.then(() => void hops++);
  };
  s.add(toy);
  await s.round(10);
  t.is(hops, 1000);
});

test('DomainClock: a dead domain\'s timers never fire, pending or new', (t) => {
  const clock = new SimClock();
  const dom = new DomainClock(clock);
  const fired: string[] = [];
  dom.schedule(10, () => fired.push('pending'));
  const other = new DomainClock(clock);
  other.schedule(10, () => fired.push('other'));
  dom.kill();
  dom.schedule(5, () => fired.push('new'));
  clock.advance(20);
  t.deepEqual(fired, ['other']);
  t.true(dom.dead);
  t.is(clock.nextDeadline(), Infinity, 'nothing of the dead domain left on the clock');
});

test('SimClock counts the timers it fires', (t) => {
  const clock = new SimClock();
  clock.schedule(1, () => {});
  const id = clock.schedule(2, () => {});
  clock.cancel(id);
  clock.advance(5);
  t.is(clock.fired, 1);
});
