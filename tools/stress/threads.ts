// Thread mode of `npm run stress`: the real system (tools/toolstack.ts: the backend worker, guests on a piscina pool)
// under a seeded fault schedule (tools/sim/faults.ts), each fault injected for real at its time after traffic starts:
// wire loss, NIC stalls and long tap holds in the backend; slow and stalled receivers, event storms and revokes of
// mapped grants in a guest; a guest killed where it stands (its domain destroyed, a new one booted in its slot later);
// the backend worker terminated, its domain released, a new backend started and every guest reconnected. At the end
// the system shuts down in order and the audit adds up every guest (the dead ones too) and every backend incarnation.
import { FAULT_TYPES, countFaults, formatFaultEvent, type FaultEvent, type FaultType } from '../sim/index.js';
import { ADVERSARY_CASES } from '../../frontend/adversary.js';
import type { MixSettings } from '../../frontend/traffic.js';
import { PHASE_STOP, RX_NORMAL, RX_SLOW, RX_STALLED, sOutstanding, sRevokeEnded, sRevokeRefused, sTxPackets } from '../../frontend/loop.js';
import type * as Comlink from 'comlink';
import type { StressBackendApi } from './backend-worker.js';
import { Toolstack, sampleGuest, type GuestDomain, type GuestSample, type SystemReport, type ToolstackOptions } from '../toolstack.js';
import { stressAudit, type StressAudit } from './audit.js';

export { stressAudit, type StressAudit } from './audit.js';

/** What the adversary catalogue did. */
export interface AdversaryFigures {
  readonly cases: number;
  readonly handled: number;
  readonly backendCrashes: number;
}

/** One second of a stress run, for the progress line. */
export interface StressProgress {
  readonly elapsedSeconds: number;
  readonly pps: number;
  readonly outstanding: number;
  readonly guests: number;
  readonly injected: number;
  readonly scheduled: number;
  readonly backend: number;
}

/** What a thread-mode run produced. */
export interface StressReport {
  readonly seed: number;
  readonly seconds: number;
  readonly guests: number;
  readonly packets: number;
  readonly bytes: number;
  readonly audit: StressAudit;
  /** Faults injected, by type (every type listed). */
  readonly faults: Record<FaultType, number>;
  /** Faults scheduled, by type. */
  readonly scheduled: Record<FaultType, number>;
  readonly adversary: AdversaryFigures;
  /** The adversary cases that were not handled, by name. */
  readonly failedCases: readonly string[];
  /** Revokes of mapped grants that end access refused, and how many of those ended later. */
  readonly revokes: { readonly refused: number; readonly ended: number };
  /** Backend incarnations (1 + restarts). */
  readonly backends: number;
  /** What went wrong outside the audit figures (a guest that did not reconnect, a fault that could not be injected). */
  readonly errors: readonly string[];
  readonly notes: readonly string[];
}

/** Options of a thread-mode run. */
export interface ThreadRunOptions {
  readonly seed: number;
  readonly seconds: number;
  readonly guests: number;
  readonly schedule: readonly FaultEvent[];
  readonly design?: string;
  /** Plays the adversary catalogue against the running backend (see ./adversary.ts); default false. */
  readonly adversary?: boolean;
  /** The adversary cases to play, by name (default the whole catalogue). */
  readonly adversaryCases?: readonly string[];
  /** What the guests' mix changes from the demo's (weights, UDP sizes); default none. */
  readonly mix?: MixSettings;
  /** Called about once a second. */
  readonly onProgress?: (p: StressProgress) => void;
  /** Called as each fault is injected (its canonical text and what it did). */
  readonly onFault?: (line: string) => void;
  /** Toolstack settings for tests (smaller guests, shorter deadlines). */
  readonly toolstack?: Partial<ToolstackOptions>;
  /** Called as each adversary case ends. */
  readonly onCase?: (line: string) => void;
}

/** Lets the adversary keep backend kills away from a case in progress (a case lives in the backend's thread). */
export interface FaultGate {
  /** Runs `fn` with no backend kill starting meanwhile; waits for a kill in progress to finish first. */
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
}

/** The default tap hold window restored after a tap-hold fault, ms (the toolstack's default). */
export const STRESS_TAP_HOLD_MS = 20;
/** How much room the event-channel host keeps for new domains (guests booted after a kill, adversaries). */
export const STRESS_EXTRA_DOMAINS = 96;
/**
 * netback's rx_drain_timeout_msecs for stress runs, ms (a module parameter in Linux, default 10000): shorter, so a
 * stalled receiver's queue is dropped, and the sender's pages freed, several times in a minute.
 */
export const STRESS_RX_DRAIN_TIMEOUT_MS = 2000;
/** How long the guests are quiet before the adversary plays (their last frames drain), ms. */
export const ADVERSARY_QUIET_MS = 200;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function zeroFaults(): Record<FaultType, number> {
  return Object.fromEntries(FAULT_TYPES.map((t) => [t, 0])) as Record<FaultType, number>;
}

// A mutex between backend kills and adversary cases.
class Gate implements FaultGate {
  private tail: Promise<void> = Promise.resolve();

  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn);
    this.tail = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }
}

/**
 * Runs the system for `seconds` of traffic under the schedule, then shuts down in order and audits. Never throws
 * for a failure of the system: that is in the report (errors, audit figures); throws only if the system cannot boot.
 */
export async function runThreads(o: ThreadRunOptions): Promise<StressReport> {
  const killsGuests = o.schedule.filter((e) => e.type === 'guest-kill').length;
  const ts = await Toolstack.boot({
    guests: o.guests,
    seconds: o.seconds,
    mtu: 1500,
    loss: 0,
    tap: true,
    pcapPath: null,
    seed: o.seed,
    design: o.design ?? 'rusty',
    tapHoldMs: STRESS_TAP_HOLD_MS,
    rxDrainTimeoutMs: STRESS_RX_DRAIN_TIMEOUT_MS,
    extraDomains: killsGuests + STRESS_EXTRA_DOMAINS,
    ...(o.mix !== undefined && { mix: o.mix }),
    ...(o.adversary === true && { backendWorker: new URL('./backend-worker.js', import.meta.url) }),
    ...o.toolstack,
  });
  const driver = new ThreadDriver(ts, o);
  try {
    return await driver.run();
  } finally {
    await ts.close();
  }
}

// The run itself: the schedule's timeline, the progress, and the audit at the end.
class ThreadDriver {
  readonly injected = zeroFaults();
  readonly errors: string[] = [];
  readonly notes: string[] = [];
  private readonly failedCases: string[] = [];
  // Slot g (1..guests) -> the domid living in it now (0 while it reboots).
  readonly slots: number[];
  private readonly gate = new Gate();
  private readonly pending: Promise<void>[] = [];
  private t0 = 0;

  constructor(
    readonly ts: Toolstack,
    readonly o: ThreadRunOptions,
  ) {
    this.slots = [0, ...ts.domains.map((d) => d.domid)];
  }

  async run(): Promise<StressReport> {
    const { ts, o } = this;
    let adversary: AdversaryFigures = { cases: 0, handled: 0, backendCrashes: 0 };
    let report: SystemReport | null = null;
    try {
      await ts.startTraffic();
      this.t0 = performance.now();
      const timeline = this.timeline();
      await this.progressUntil(this.t0 + o.seconds * 1000);
      await timeline;
      await Promise.all(this.pending);
      await this.recoverCrashedBackend();
      if (o.adversary === true) adversary = await this.playAdversary();
      await ts.stopTraffic();
    } catch (e) {
      this.errors.push(message(e));
    }
    report = await ts.shutdown();
    return this.finish(report, adversary);
  }

  private elapsed(): number {
    return performance.now() - this.t0;
  }

  // Injects each event at its time; events run concurrently (the schedule keeps conflicting ones apart).
  private async timeline(): Promise<void> {
    for (const e of this.o.schedule) {
      const wait = this.t0 + e.at - performance.now();
      if (wait > 0) await sleep(wait);
      this.pending.push(
        this.inject(e).catch((err: unknown) => {
          this.errors.push(`fault ${formatFaultEvent(e)}: ${message(err)}`);
        }),
      );
    }
  }

  private say(e: FaultEvent, what: string): void {
    this.o.onFault?.(`fault ${(this.elapsed() / 1000).toFixed(3).padStart(8)} s  ${formatFaultEvent(e)}${what === '' ? '' : `  (${what})`}`);
  }

  private slotDomain(g: number): GuestDomain {
    const domid = this.slots[g] ?? 0;
    const d = this.ts.liveDomains.find((x) => x.domid === domid);
    if (d === undefined) throw new Error(`guest slot ${g} has no live guest (it has ${this.slots.length - 1} slots)`);
    return d;
  }

  private async inject(e: FaultEvent): Promise<void> {
    const ts = this.ts;
    switch (e.type) {
      case 'loss':
        await ts.backendFault({ kind: 'loss', p: e.p, ms: e.dur });
        this.injected[e.type]++;
        this.say(e, `the uplink's wire loses ${Math.round(e.p * 100)}% of frames`);
        return;
      case 'nic-stall':
        await ts.backendFault({ kind: 'nic-stall', ms: e.dur });
        this.injected[e.type]++;
        this.say(e, 'the uplink completes nothing');
        return;
      case 'tap-hold':
        await ts.backendFault({ kind: 'tap-hold', holdMs: e.hold });
        this.injected[e.type]++;
        this.say(e, `the tap holds clones ${e.hold} ms`);
        await sleep(e.dur);
        await ts.backendFault({ kind: 'tap-hold', holdMs: STRESS_TAP_HOLD_MS });
        return;
      case 'slow-receiver': {
        const d = this.slotDomain(e.g);
        d.stats.setRxMode(RX_SLOW, e.every);
        this.injected[e.type]++;
        this.say(e, `d${d.domid} takes one RX packet every ${e.every} ms`);
        await sleep(e.dur);
        d.stats.setRxMode(RX_NORMAL);
        return;
      }
      case 'stalled-receiver': {
        const d = this.slotDomain(e.g);
        d.stats.setRxMode(RX_STALLED);
        this.injected[e.type]++;
        this.say(e, `d${d.domid} stops receiving`);
        await sleep(e.dur);
        d.stats.setRxMode(RX_NORMAL);
        return;
      }
      case 'event-storm': {
        const d = this.slotDomain(e.g);
        d.stats.setStorm(e.n);
        this.injected[e.type]++;
        this.say(e, `d${d.domid} notifies ${e.n} times per ms`);
        await sleep(e.dur);
        d.stats.setStorm(0);
        return;
      }
      case 'revoke-mapped': {
        const d = this.slotDomain(e.g);
        d.stats.requestRevoke(e.n);
        this.injected[e.type]++;
        this.say(e, `d${d.domid} ends access to up to ${e.n} grants the backend maps`);
        return;
      }
      case 'guest-kill': {
        const d = this.slotDomain(e.g);
        this.slots[e.g] = 0;
        const k = await ts.killGuest(d.domid);
        this.injected[e.type]++;
        this.say(e, `d${d.domid} killed with ${k.outstanding} grants out, ${k.stillMapped} refs still mapped`);
        await sleep(e.restart);
        const n = await ts.addGuest();
        this.slots[e.g] = n.domid;
        this.o.onFault?.(`       ${(this.elapsed() / 1000).toFixed(3).padStart(8)} s  slot ${e.g}: d${n.domid} booted and connected`);
        return;
      }
      case 'backend-kill': {
        const r = await this.gate.exclusive(() => ts.killBackend(e.release, e.restart));
        this.injected[e.type]++;
        this.say(
          e,
          `backend ${ts.backend.index - 1} killed; ${r.portsClosed} ports closed, ${r.mappingsReleased} mappings released; ` +
            `backend ${ts.backend.index} up, ${r.reconnected} guests reconnected in ${Math.round(r.ms)} ms` +
            (r.problems.length === 0 ? '' : `; ${r.problems.join('; ')}`),
        );
        return;
      }
    }
  }

  /**
   * The catalogue against the backend that went through the faults: the guests stop sending first (they stay
   * connected), so the cases' exact expectations (frames queued, responses) see no broadcast or flooded frame.
   */
  private async playAdversary(): Promise<AdversaryFigures> {
    const ts = this.ts;
    for (const d of ts.liveDomains) d.stats.setPhase(PHASE_STOP);
    await sleep(ADVERSARY_QUIET_MS);
    const api = (): Comlink.Remote<StressBackendApi> => ts.backend.api as unknown as Comlink.Remote<StressBackendApi>;
    const wanted = this.o.adversaryCases;
    const indices = ADVERSARY_CASES.flatMap((c, i) => (wanted === undefined || wanted.includes(c.name) ? [i] : []));
    const n = indices.length;
    let handled = 0;
    let crashes = 0;
    const copied: string[] = [];
    for (const [k, i] of indices.entries()) {
      const r = await this.gate.exclusive(() => api().playAdversaryCase(i));
      if (r.handled) handled++;
      else {
        this.failedCases.push(r.name);
        this.errors.push(`adversary ${r.name}: ${r.detail}`);
      }
      if (r.backendCrashed) crashes++;
      if (r.premise === 'copied') copied.push(r.name);
      const on = r.premise === 'copied' ? ' (on copied pages)' : '';
      this.o.onCase?.(`adversary ${String(k + 1).padStart(2)}/${n}  ${r.handled ? 'handled' : 'NOT HANDLED'}${on}  ${r.name}${r.handled ? '' : `: ${r.detail}`}`);
      if (ts.backendDead !== null) await this.recoverCrashedBackend();
    }
    if (copied.length > 0) {
      this.notes.push(`adversary cases whose act met pages the stack had already copied (the design or a tap copies them): ${copied.join(', ')}`);
    }
    return { cases: n, handled, backendCrashes: crashes };
  }

  // A backend worker that died on its own is a crash: it is counted, and replaced so the run can end in order.
  private async recoverCrashedBackend(): Promise<void> {
    if (this.ts.backendDead === null) return;
    this.errors.push(`backend ${this.ts.backend.index} crashed: ${this.ts.backendDead}`);
    await this.gate.exclusive(() => this.ts.restartBackend());
  }

  // One progress report a second until `end`; the backend's audit figures are sampled at the same time.
  private async progressUntil(end: number): Promise<void> {
    let prev = this.samples();
    let prevAt = performance.now();
    for (;;) {
      const now = performance.now();
      if (now >= end) return;
      await sleep(Math.min(1000, end - now));
      if (this.ts.backendDead !== null && !this.ts.restartInProgress) await this.recoverCrashedBackend();
      void this.ts.sampleBackend();
      const cur = this.samples();
      const at = performance.now();
      let packets = 0;
      let outstanding = 0;
      for (const [domid, s] of cur) {
        const p = prev.get(domid);
        packets += s.counters[sTxPackets]! - (p?.counters[sTxPackets] ?? s.counters[sTxPackets]!);
        outstanding += s.counters[sOutstanding]!;
      }
      let injected = 0;
      for (const t of FAULT_TYPES) injected += this.injected[t];
      this.o.onProgress?.({
        elapsedSeconds: (at - this.t0) / 1000,
        pps: packets / ((at - prevAt) / 1000),
        outstanding,
        guests: this.ts.liveDomains.length,
        injected,
        scheduled: this.o.schedule.length,
        backend: this.ts.backend.index,
      });
      prev = cur;
      prevAt = at;
    }
  }

  private samples(): Map<number, GuestSample> {
    const m = new Map<number, GuestSample>();
    for (const d of this.ts.liveDomains) m.set(d.domid, sampleGuest(d.stats, 0, null));
    return m;
  }

  private finish(r: SystemReport, adversary: AdversaryFigures): StressReport {
    const ts = this.ts;
    this.errors.push(...r.errors);
    this.notes.push(...r.notes);
    const audit = stressAudit(r.perGuest, ts, r.backend);
    let refused = 0;
    let ended = 0;
    for (const d of ts.liveDomains) {
      const c = sampleGuest(d.stats, 0, null).counters;
      refused += c[sRevokeRefused]!;
      ended += c[sRevokeEnded]!;
    }
    if (ended !== refused) this.errors.push(`${refused - ended} revoked grants never ended`);
    const scheduled = countFaults(this.o.schedule);
    for (const t of FAULT_TYPES) {
      if (this.injected[t] !== scheduled[t]) this.errors.push(`${t}: ${this.injected[t]} of ${scheduled[t]} injected`);
    }
    let packets = r.packets;
    let bytes = r.bytes;
    // Dead guests' traffic counts too: the system report only has the live ones.
    for (const dg of ts.dead) {
      packets += dg.report.txPackets;
      bytes += dg.report.txBytes;
    }
    return {
      seed: this.o.seed,
      seconds: this.o.seconds,
      guests: this.o.guests,
      packets,
      bytes,
      audit,
      faults: { ...this.injected },
      scheduled,
      adversary: { ...adversary, backendCrashes: adversary.backendCrashes + ts.backendCrashes },
      failedCases: [...this.failedCases],
      revokes: { refused, ended },
      backends: ts.backends.length,
      errors: [...this.errors],
      notes: [...this.notes],
    };
  }
}
