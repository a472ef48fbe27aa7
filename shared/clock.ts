// Time reaches drivers, the stack and the grant table only through a Clock, so that the same code can
// run on real time (worker threads) or on virtual time under a seeded one-thread scheduler.

/** An opaque handle for a scheduled callback. */
export type TimerId = number;

/** Time and timers. `now()` is in milliseconds (fractional); callbacks never run synchronously inside `schedule`. */
export interface Clock {
  now(): number;
  schedule(delayMs: number, fn: () => void): TimerId;
  cancel(id: TimerId): void;
}

/** Real time: performance.now() and unref'd Node timers (a pending timer never keeps a worker alive). */
export class RealClock implements Clock {
  private readonly timers = new Map<TimerId, ReturnType<typeof setTimeout>>();
  private nextId = 1;

  now(): number {
    return performance.now();
  }

  schedule(delayMs: number, fn: () => void): TimerId {
    const id = this.nextId++;
    const t = setTimeout(() => {
      this.timers.delete(id);
      fn();
    }, delayMs);
    t.unref();
    this.timers.set(id, t);
    return id;
  }

  cancel(id: TimerId): void {
    const t = this.timers.get(id);
    if (t !== undefined) {
      clearTimeout(t);
      this.timers.delete(id);
    }
  }
}

/** Virtual time: nothing moves until `advance` is called; timers fire in (time, id) order. */
export class VirtualClock implements Clock {
  private t = 0;
  private nextId = 1;
  private readonly pending = new Map<TimerId, { at: number; fn: () => void }>();

  now(): number {
    return this.t;
  }

  schedule(delayMs: number, fn: () => void): TimerId {
    const id = this.nextId++;
    this.pending.set(id, { at: this.t + Math.max(0, delayMs), fn });
    return id;
  }

  cancel(id: TimerId): void {
    this.pending.delete(id);
  }

  /** The time of the earliest pending timer, or Infinity when none is pending. */
  nextDeadline(): number {
    let best = Infinity;
    for (const p of this.pending.values()) if (p.at < best) best = p.at;
    return best;
  }

  /** Moves time forward by `ms`, running every timer that falls due, earliest first. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      let bestId = -1;
      let bestAt = Infinity;
      for (const [id, p] of this.pending) {
        if (p.at <= end && (p.at < bestAt || (p.at === bestAt && id < bestId))) {
          bestAt = p.at;
          bestId = id;
        }
      }
      if (bestId < 0) break;
      const p = this.pending.get(bestId)!;
      this.pending.delete(bestId);
      this.t = Math.max(this.t, p.at);
      p.fn();
    }
    this.t = end;
  }
}
