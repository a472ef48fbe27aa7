// The lab: every chosen design meets every chosen workload with the same seed, one run at a time in this thread,
// workload by workload (so the designs compared on a workload are timed close together), then the claims.
import { BASELINE_DESIGN, type LabDesign } from './designs.js';
import { measureClaims, type Claim } from './claims.js';
import { runOps } from './ops.js';
import { toResult, withRelativeThroughput, type LabResult } from './results.js';
import type { RunMeasure } from './run.js';
import { runSystem } from './system.js';
import type { Workload } from './workloads.js';

/** What to run. */
export interface LabOptions {
  readonly designs: readonly LabDesign[];
  readonly workloads: readonly Workload[];
  /** Virtual seconds of each system workload; op sequences run `runsPerSecond × seconds` lists. */
  readonly seconds: number;
  readonly seed: number;
  /** Run the timed loops of the cost claims (default true). */
  readonly timing?: boolean;
  /** Warm the JIT up on each workload before timing anything (default true). */
  readonly warmup?: boolean;
  /** Draws per operation in the per-operation probe (default 20). */
  readonly probeDraws?: number;
}

/** One finished run, for progress reports. */
export interface LabProgress {
  readonly done: number;
  readonly total: number;
  readonly result: LabResult;
}

/** The lab's outcome. */
export interface LabReport {
  readonly seed: number;
  readonly seconds: number;
  readonly designs: readonly string[];
  readonly workloads: readonly string[];
  readonly results: readonly LabResult[];
  readonly claims: readonly Claim[];
}

/** Warm-up length, virtual seconds (a short run of the first design, discarded). */
export const WARMUP_SECONDS = 0.03;

/** Op lists of the op-sequence workload for `seconds` (at least one). */
export function opsRuns(runsPerSecond: number, seconds: number): number {
  return Math.max(1, Math.round(runsPerSecond * seconds));
}

/** One run of design `d` on workload `w`. */
export function runOne(d: LabDesign, w: Workload, seconds: number, seed: number): RunMeasure {
  return w.kind === 'system' ? runSystem(d, w, seconds, seed) : runOps(d, opsRuns(w.runsPerSecond, seconds), seed);
}

/** Runs the lab; `progress` is told after each run. */
export function runLab(opts: LabOptions, progress?: (p: LabProgress) => void): LabReport {
  const total = opts.designs.length * opts.workloads.length;
  const rows: LabResult[] = [];
  for (const w of opts.workloads) {
    if ((opts.warmup ?? true) && opts.designs.length > 0) runOne(opts.designs[0]!, w, Math.min(opts.seconds, WARMUP_SECONDS), opts.seed);
    for (const d of opts.designs) {
      const r = toResult(d, w.name, runOne(d, w, opts.seconds, opts.seed));
      rows.push(r);
      progress?.({ done: rows.length, total, result: r });
    }
  }
  // Table order: design by design, each with its workloads in order.
  const order = (r: LabResult): number => opts.designs.findIndex((d) => d.name === r.design) * 1000 + opts.workloads.findIndex((w) => w.name === r.workload);
  const results = withRelativeThroughput(rows, BASELINE_DESIGN).sort((a, b) => order(a) - order(b));
  const claims = measureClaims({ results, designs: opts.designs, seed: opts.seed, timing: opts.timing ?? true, probeDraws: opts.probeDraws ?? 20 });
  return {
    seed: opts.seed,
    seconds: opts.seconds,
    designs: opts.designs.map((d) => d.name),
    workloads: opts.workloads.map((w) => w.name),
    results,
    claims,
  };
}

/** Rows of designs expected to be sound that are not (each fails the lab). */
export function soundFailures(report: LabReport): LabResult[] {
  return report.results.filter((r) => r.expectedSound && !r.safe);
}
