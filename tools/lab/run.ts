// What one (design, workload) run measured, before it becomes a table row: safety from the oracle, promptness,
// the stack's work counters, zerocopy completions, and the wall-clock time spent in the data path.

import type { PromptnessSummary } from './promptness.js';

/** One guest's frames in a system run. */
export interface GuestCounts {
  readonly domid: number;
  readonly txPackets: number;
  readonly rxPackets: number;
}

/** The raw figures of one run. */
export interface RunMeasure {
  /** Packets and bytes the guests (or, for op sequences, netback's builds) put into the stack. */
  readonly packets: number;
  readonly bytes: number;
  /** Grants the oracle saw mapped (op sequences: foreign pages netback's builds handed to the design). */
  readonly mapped: number;
  /** Per guest of a system run: frames sent and received (empty for op sequences). */
  readonly guests: readonly GuestCounts[];
  readonly earlyReturns: number;
  readonly doubleReturns: number;
  readonly leaks: number;
  /** Op sequences: data mismatches and thrown errors; system runs: corrupt payloads and a thrown error. */
  readonly otherFailures: number;
  /** The first violation, with the operation that breaks the design, or null. */
  readonly firstViolation: string | null;
  /** Per-grant promptness (system runs), or null where the workload cannot observe reachability per page. */
  readonly promptness: PromptnessSummary | null;
  /** Mean delay in steps from unreachable to returned (both kinds of run). */
  readonly lateMeanSteps: number;
  /** What the workload made the system do (retransmits, partial ACKs, flood clones, tap captures, ...). */
  readonly events: Readonly<Record<string, number>>;
  /** SkbStats counters at the end (allocs, page gets/puts, destructor calls, bytes copied, ...). */
  readonly stats: Readonly<Record<string, number>>;
  /** Zerocopy completions and those that completed as copied (success = false). */
  readonly zerocopyCompletions: number;
  readonly copiedCompletions: number;
  /** Wall-clock ms spent in the data path, the oracle's and the lab's checks excluded (speed: not reproducible). */
  readonly wallMs: number;
  /** Lab steps and virtual ms (0 for op sequences). */
  readonly steps: number;
  readonly virtualMs: number;
  /** Notes: what had to be aborted at the drain deadline, and the like. */
  readonly notes: readonly string[];
}

/** The numeric fields of an SkbStats-like object (copied, so later work does not change them). */
export function snapshotStats(stats: object): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(stats)) if (typeof v === 'number') out[k] = v;
  return out;
}

/** Adds every counter of `b` into `a`. */
export function addStats(a: Record<string, number>, b: Readonly<Record<string, number>>): void {
  for (const [k, v] of Object.entries(b)) a[k] = (a[k] ?? 0) + v;
}
