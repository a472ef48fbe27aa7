// The deterministic one-thread scheduler of the simulator: actors (each guest, the backend) take turns in rounds on a
// virtual clock. A round steps every runnable actor once, in an order drawn from the seeded Random (so a seed picks
// one interleaving among many, FoundationDB style), then lets every queued microtask run (the xenstore, xenbus and
// handshake code is promise-based and only ever waits on the store, other actors or clock timers, never on real
// I/O), then moves time: by BUSY_STEP_MS when anything happened, else straight to the next deadline. An actor is
// runnable when it was woken (its domain's event channel fired: the SchedulerWaker seam of shared/evtchn.ts), when
// it did work in its last step, or when its own deadline has come. A killed actor is never stepped again and its
// timers never fire (DomainClock): its state is dropped on the floor, as a dead thread's is.

import type { Clock, TimerId } from '../../shared/clock.js';
import { VirtualClock } from '../../shared/clock.js';
import type { EvtchnDomain, Waker } from '../../shared/evtchn.js';
import type { Random } from '../../shared/random.js';

/** Virtual time a round that did something takes, ms (1 us: rounds never share a timestamp). */
export const BUSY_STEP_MS = 0.001;

/** The simulation's clock: a VirtualClock that counts the timers it has fired (so the loop knows to drain after). */
export class SimClock extends VirtualClock {
  /** Timer callbacks run so far. */
  fired = 0;

  override schedule(delayMs: number, fn: () => void): TimerId {
    return super.schedule(delayMs, () => {
      this.fired++;
      fn();
    });
  }
}

/** One domain's view of the clock: its timers are dropped once the domain dies (a dead thread runs nothing). */
export class DomainClock implements Clock {
  private alive = true;
  private readonly timers = new Set<TimerId>();

  constructor(private readonly base: Clock) {}

  now(): number {
    return this.base.now();
  }

  schedule(delayMs: number, fn: () => void): TimerId {
    const id = this.base.schedule(delayMs, () => {
      this.timers.delete(id);
      if (this.alive) fn();
    });
    this.timers.add(id);
    return id;
  }

  cancel(id: TimerId): void {
    this.timers.delete(id);
    this.base.cancel(id);
  }

  /** The domain died: its pending timers are cancelled and new ones never fire. */
  kill(): void {
    this.alive = false;
    for (const id of this.timers) this.base.cancel(id);
    this.timers.clear();
  }

  /** Whether kill() was called. */
  get dead(): boolean {
    return !this.alive;
  }
}

/** Something the scheduler steps: a guest, the backend. */
export interface SimActor {
  /** For logs and crash reports. */
  readonly name: string;
  /** One bounded, synchronous step at `now`; returns the work done (0: nothing to do). */
  step(now: number): number;
  /** The earliest time the actor has timed work without being woken, Infinity when none. */
  nextDeadline(): number;
}

// The scheduler's bookkeeping per actor.
interface Slot {
  readonly actor: SimActor;
  alive: boolean;
  woken: boolean;
  busy: boolean;
}

/** What the scheduler does when an actor's step throws (a crash of that domain). */
export type CrashHandler = (actor: SimActor, error: unknown) => void;

/** Resolves after every microtask queued so far, and every one they queue, has run (one macrotask turn). */
export function drainMicrotasks(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Counters of a scheduler. */
export interface SchedulerStats {
  rounds: number;
  steps: number;
  idleJumps: number;
}

/**
 * Steps actors in seeded order over a SimClock. Single-threaded; not re-entrant (one round at a time).
 */
export class ActorScheduler {
  readonly stats: SchedulerStats = { rounds: 0, steps: 0, idleJumps: 0 };
  private readonly slots: Slot[] = [];
  private readonly byActor = new Map<SimActor, Slot>();
  private readonly byDomain = new Map<number, Slot>();
  private readonly order: Slot[] = [];
  private running = false;

  /** The Waker for an EvtchnHost: an event on a domain wakes the actor registered for it (see `bindDomain`). */
  readonly waker: Waker = {
    wake: (target: EvtchnDomain): void => {
      const s = this.byDomain.get(target.domid);
      if (s !== undefined && s.alive) s.woken = true;
    },
  };

  constructor(
    readonly clock: SimClock,
    private readonly random: Random,
    private readonly onCrash: CrashHandler,
  ) {}

  /** Adds an actor (runnable at once); `domid` binds it to that domain's event-channel wake-ups. */
  add(actor: SimActor, domid?: number): void {
    if (this.byActor.has(actor)) throw new Error(`scheduler: ${actor.name} is already added`);
    const s: Slot = { actor, alive: true, woken: true, busy: false };
    this.slots.push(s);
    this.byActor.set(actor, s);
    if (domid !== undefined) this.byDomain.set(domid, s);
  }

  /** Kills an actor: never stepped again (it may be in the middle of nothing: steps are synchronous). */
  kill(actor: SimActor): void {
    const s = this.byActor.get(actor);
    if (s === undefined) return;
    s.alive = false;
    this.byActor.delete(actor);
    for (const [d, x] of this.byDomain) if (x === s) this.byDomain.delete(d);
    const i = this.slots.indexOf(s);
    if (i >= 0) this.slots.splice(i, 1);
  }

  /** Makes an actor runnable in the next round. */
  wake(actor: SimActor): void {
    const s = this.byActor.get(actor);
    if (s !== undefined) s.woken = true;
  }

  /** Whether the actor was added and not killed. */
  has(actor: SimActor): boolean {
    return this.byActor.has(actor);
  }

  /** Live actors, in the order they were added. */
  get actors(): SimActor[] {
    return this.slots.map((s) => s.actor);
  }

  /** The earliest deadline of any live actor or clock timer (Infinity when none). */
  nextDeadline(): number {
    let t = this.clock.nextDeadline();
    for (const s of this.slots) {
      const d = s.actor.nextDeadline();
      if (d < t) t = d;
    }
    return t;
  }

  /**
   * One round: steps each runnable actor once in seeded order, drains microtasks, calls `settled` (bookkeeping),
   * and unless `stop()` now holds advances the clock by BUSY_STEP_MS if anything happened or to min(next deadline,
   * `horizon`) if not (never past `horizon`), draining again if a timer fired. Returns the work done by the steps.
   */
  async round(horizon: number, settled?: () => void, stop?: () => boolean): Promise<number> {
    if (this.running) throw new Error('scheduler: round() is not re-entrant');
    this.running = true;
    try {
      const clock = this.clock;
      const now = clock.now();
      const order = this.order;
      order.length = 0;
      for (const s of this.slots) if (s.woken || s.busy || s.actor.nextDeadline() <= now) order.push(s);
      // Fisher-Yates with the seeded Random: the interleaving is the seed's.
      for (let i = order.length - 1; i > 0; i--) {
        const j = this.random.int(0, i);
        const t = order[i]!;
        order[i] = order[j]!;
        order[j] = t;
      }
      let did = 0;
      for (const s of order) {
        if (!s.alive) continue; // killed by an earlier step of this round
        s.woken = false;
        let w = 0;
        try {
          w = s.actor.step(now);
        } catch (e) {
          s.busy = false;
          this.onCrash(s.actor, e);
          continue;
        }
        s.busy = w > 0;
        did += w;
        this.stats.steps++;
      }
      this.stats.rounds++;
      await drainMicrotasks();
      settled?.();
      if (stop?.() === true) return did;
      let active = did > 0;
      if (!active) for (const s of this.slots) if (s.woken) active = true;
      const fired = clock.fired;
      if (active) {
        clock.advance(Math.min(BUSY_STEP_MS, Math.max(0, horizon - clock.now())));
      } else {
        this.stats.idleJumps++;
        // An actor whose deadline has come but that found nothing to do waits for a wake-up, not for time.
        let next = Math.min(clock.nextDeadline(), horizon);
        for (const s of this.slots) {
          const d = s.actor.nextDeadline();
          if (d > now && d < next) next = d;
        }
        if (!Number.isFinite(next)) throw new Error('scheduler: nothing will ever happen and no horizon was given');
        clock.advance(next > clock.now() ? next - clock.now() : BUSY_STEP_MS);
      }
      if (clock.fired !== fired) {
        await drainMicrotasks();
        settled?.();
      }
      return did;
    } finally {
      this.running = false;
    }
  }
}
