// One table row per (design, workload): the run's raw figures turned into the lab's metrics (safety, promptness,
// copies, cost, speed). Field order is the JSON order; the first ten are the documented contract.
import type { LabDesign } from './designs.js';
import type { RunMeasure } from './run.js';

/** One row of the lab's table and JSON. */
export interface LabResult {
  readonly design: string;
  readonly workload: string;
  readonly earlyReturns: number;
  readonly doubleReturns: number;
  readonly leaks: number;
  /** p99 of the delay from unreachable to returned, in lab steps (null where the workload cannot see it per grant). */
  readonly lateP99: number | null;
  readonly copiedBytesPerByte: number;
  readonly allocsPerPacket: number;
  readonly refOpsPerPacket: number;
  /** Packets per wall-clock second of the data path (speed: not reproducible). */
  readonly pps: number;
  /** pps relative to the baseline design on the same workload (speed), or null without a baseline run. */
  readonly relativeThroughput: number | null;
  readonly expectedSound: boolean;
  /** No early return, double return, leak, data mismatch, corrupt payload or error. */
  readonly safe: boolean;
  /** Data mismatches, corrupt payloads and thrown errors. */
  readonly otherFailures: number;
  /** The first violation with the operation that breaks the design, or null. */
  readonly firstViolation: string | null;
  readonly packets: number;
  readonly bytes: number;
  readonly grants: number;
  readonly lateP50: number | null;
  readonly lateMax: number | null;
  readonly lateP50Ms: number | null;
  readonly lateP99Ms: number | null;
  readonly lateMaxMs: number | null;
  readonly lateMeanSteps: number;
  /** Grants returned at least a step after they became unreachable, and their share of the grants returned. */
  readonly heldLate: number | null;
  readonly heldLateShare: number | null;
  readonly bytesCopied: number;
  /** Zerocopy completions, and how many completed as copied (mainline's success = false). */
  readonly completions: number;
  readonly copiedCompletions: number;
  readonly copiedCompletionShare: number;
  readonly callbacksPerPacket: number;
  /** page get_page calls per mapped grant. */
  readonly pageGetsPerGrant: number;
  readonly bookkeepingBytesPerPage: number | null;
  readonly bookkeepingBytesPerSkb: number | null;
  readonly bookkeepingBytesPerPacket: number | null;
  readonly wallMs: number;
  readonly steps: number;
  readonly virtualMs: number;
  readonly notes: readonly string[];
  /** What the workload made the system do (retransmits, partial ACKs, flood clones, tap captures, ...). */
  readonly events: Readonly<Record<string, number>>;
  /** Every SkbStats counter of the run. */
  readonly counters: Readonly<Record<string, number>>;
}

/** The fields that depend on wall-clock time (everything else follows from the seed). */
export const SPEED_FIELDS: readonly (keyof LabResult)[] = ['pps', 'relativeThroughput', 'wallMs'];

/** Sum of the counters whose names match `re`. */
export function sumCounters(stats: Readonly<Record<string, number>>, re: RegExp): number {
  let n = 0;
  for (const [k, v] of Object.entries(stats)) if (re.test(k)) n += v;
  return n;
}

/** Allocations: every counter named *Allocs (skbs, shinfos, heads, pages, and any a design adds, e.g. tokens). */
export const ALLOC_COUNTERS = /Allocs$/;
/** Reference-count operations: page gets and puts, parent (orig) references, and any *Gets/*Puts/*Refs/*RefOps a design adds. */
export const REFOP_COUNTERS = /(Gets|Puts|Refs|RefOps)$/;
/**
 * Callback invocations: shinfo destructors, net_priv's get/put callbacks, token finish callbacks, per-page
 * destructors, ubuf completions (success or not), and any *Calls/*Callbacks a design adds.
 */
export const CALLBACK_COUNTERS = /^(tokensFinished|pageReleases|zerocopySuccess|zerocopyFail)$|(Calls|Callbacks)$/;

const per = (n: number, d: number): number => (d > 0 ? n / d : 0);

/** The row for run `m` of design `d` on workload `workload`. */
export function toResult(d: LabDesign, workload: string, m: RunMeasure): LabResult {
  const p = m.promptness;
  const s = m.stats;
  const violations = m.earlyReturns + m.doubleReturns + m.leaks + m.otherFailures;
  return {
    design: d.name,
    workload,
    earlyReturns: m.earlyReturns,
    doubleReturns: m.doubleReturns,
    leaks: m.leaks,
    lateP99: p === null ? null : p.steps.p99,
    copiedBytesPerByte: per(s['bytesCopied'] ?? 0, m.bytes),
    allocsPerPacket: per(sumCounters(s, ALLOC_COUNTERS), m.packets),
    refOpsPerPacket: per(sumCounters(s, REFOP_COUNTERS), m.packets),
    pps: m.wallMs > 0 ? (m.packets * 1000) / m.wallMs : 0,
    relativeThroughput: null,
    expectedSound: d.expectedSound,
    safe: violations === 0,
    otherFailures: m.otherFailures,
    firstViolation: m.firstViolation,
    packets: m.packets,
    bytes: m.bytes,
    grants: m.mapped,
    lateP50: p === null ? null : p.steps.p50,
    lateMax: p === null ? null : p.steps.max,
    lateP50Ms: p === null ? null : p.ms.p50,
    lateP99Ms: p === null ? null : p.ms.p99,
    lateMaxMs: p === null ? null : p.ms.max,
    lateMeanSteps: m.lateMeanSteps,
    heldLate: p === null ? null : p.heldLate,
    heldLateShare: p === null ? null : per(p.heldLate, p.returned),
    bytesCopied: s['bytesCopied'] ?? 0,
    completions: m.zerocopyCompletions,
    copiedCompletions: m.copiedCompletions,
    copiedCompletionShare: per(m.copiedCompletions, m.zerocopyCompletions),
    callbacksPerPacket: per(sumCounters(s, CALLBACK_COUNTERS), m.packets),
    pageGetsPerGrant: per(s['pageGets'] ?? 0, m.mapped),
    bookkeepingBytesPerPage: d.bookkeeping === null ? null : d.bookkeeping.perPage,
    bookkeepingBytesPerSkb: d.bookkeeping === null ? null : d.bookkeeping.perSkb,
    bookkeepingBytesPerPacket: d.bookkeeping?.perPacket ?? null,
    wallMs: m.wallMs,
    steps: m.steps,
    virtualMs: m.virtualMs,
    notes: m.notes,
    events: m.events,
    counters: m.stats,
  };
}

/** Fills relativeThroughput: each row's pps over the baseline design's pps on the same workload. */
export function withRelativeThroughput(rows: readonly LabResult[], baseline: string): LabResult[] {
  const base = new Map<string, number>();
  for (const r of rows) if (r.design === baseline && r.pps > 0) base.set(r.workload, r.pps);
  return rows.map((r) => {
    const b = base.get(r.workload);
    return { ...r, relativeThroughput: b === undefined ? null : r.pps / b };
  });
}
