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
  /**
   * Timed passes over the designs of each workload, alternately in forward and reverse order (default 2): each
   * row's speed is its best pass, so neither the order nor a burst of load elsewhere on the machine decides it.
   * Every pass after the first must reproduce the first one's figures exactly, which the lab checks.
   */
  readonly speedPasses?: number;
}

/** One finished run, for progress reports. */
export interface LabProgress {
  readonly done: number;
  readonly total: number;
  /** 1 for the run whose figures count, 2.. for the timing passes. */
  readonly pass: number;
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

/** Warm-up length, virtual seconds (a short run of each design, discarded). */
export const WARMUP_SECONDS = 0.02;

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
  const passes = opts.speedPasses ?? 2;
  if (!Number.isInteger(passes) || passes < 1) throw new RangeError(`speedPasses must be a positive integer but got ${passes}`);
  const total = opts.designs.length * opts.workloads.length * passes;
  const rows: LabResult[] = [];
  let done = 0;
  for (const w of opts.workloads) {
    // Every design's code paths get hot before any of them is timed (otherwise the first ones pay the JIT).
    if (opts.warmup ?? true) for (const d of opts.designs) runOne(d, w, Math.min(opts.seconds, WARMUP_SECONDS), opts.seed);
    const first = new Map<string, RunMeasure>();
    const best = new Map<string, number>();
    for (let pass = 0; pass < passes; pass++) {
      const order = pass % 2 === 0 ? opts.designs : [...opts.designs].reverse();
      for (const d of order) {
        const m = runOne(d, w, opts.seconds, opts.seed);
        const f = first.get(d.name);
        if (f === undefined) first.set(d.name, m);
        else if (!sameFigures(f, m)) first.set(d.name, { ...f, notes: [...f.notes, `pass ${pass + 1} did not reproduce pass 1's figures`] });
        best.set(d.name, Math.min(best.get(d.name) ?? Infinity, m.wallMs));
        progress?.({ done: ++done, total, pass: pass + 1, result: toResult(d, w.name, m) });
      }
    }
    for (const d of opts.designs) rows.push(toResult(d, w.name, { ...first.get(d.name)!, wallMs: best.get(d.name)! }));
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

/** Whether two runs measured the same (everything but wall-clock time). */
export function sameFigures(a: RunMeasure, b: RunMeasure): boolean {
  return JSON.stringify({ ...a, wallMs: 0 }) === JSON.stringify({ ...b, wallMs: 0 });
}

/** Rows of designs expected to be sound that are not (each fails the lab). */
export function soundFailures(report: LabReport): LabResult[] {
  return report.results.filter((r) => r.expectedSound && !r.safe);
}
