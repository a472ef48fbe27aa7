// Many seeded runs of the executor: run i replays seed (S + i) mod 2^32, so `--seed <firstFailingSeed> --runs 1`
// reproduces a failure exactly. The first failing run is shrunk and replayed with a trace.
import type { ReleaseDesign } from '../../backend/release.js';
import { Random } from '../../shared/random.js';
import { executeOps, type FailureKind, type RunResult } from './executor.js';
import { generateOps, type OpRecord } from './ops.js';
import { shrinkOps } from './shrink.js';

/** What to run. */
export interface FuzzOptions {
  readonly runs: number;
  readonly seed: number;
  readonly design: ReleaseDesign;
  /** Shrink the first failing run (default true). */
  readonly shrink?: boolean;
}

/** The first failing run, its shrunk op list and the traced replay of the shrunk list. */
export interface FailureReport {
  readonly seed: number;
  readonly ops: readonly OpRecord[];
  readonly result: RunResult;
  readonly shrunk: readonly OpRecord[];
  readonly shrunkResult: RunResult;
  readonly shrinkTries: number;
}

/** Totals over all runs. */
export interface FuzzSummary {
  readonly design: string;
  readonly runs: number;
  readonly steps: number;
  readonly violations: number;
  readonly earlyReturns: number;
  readonly doubleReturns: number;
  readonly leaks: number;
  readonly dataMismatches: number;
  readonly errors: number;
  readonly failingRuns: number;
  readonly lateTotal: number;
  readonly firstFailingSeed: number | null;
  readonly firstFailure: FailureReport | null;
}

/** The seed of run `i` of a fuzz session started at `seed`. */
export function runSeed(seed: number, i: number): number {
  return (seed + i) >>> 0;
}

/** The op list of the run with this seed. */
export function opsForSeed(seed: number): OpRecord[] {
  return generateOps(new Random(seed));
}

/** Executes `runs` seeded runs; `onProgress(done, partial)` is called after each run. */
export function runFuzz(opts: FuzzOptions, onProgress?: (done: number, partial: FuzzSummary) => void): FuzzSummary {
  const t = {
    steps: 0,
    violations: 0,
    earlyReturns: 0,
    doubleReturns: 0,
    leaks: 0,
    dataMismatches: 0,
    errors: 0,
    failingRuns: 0,
    lateTotal: 0,
  };
  let first: FailureReport | null = null;
  let firstSeed: number | null = null;
  const snapshot = (runs: number): FuzzSummary => ({
    design: opts.design.name,
    runs,
    ...t,
    firstFailingSeed: firstSeed,
    firstFailure: first,
  });
  for (let i = 0; i < opts.runs; i++) {
    const seed = runSeed(opts.seed, i);
    const ops = opsForSeed(seed);
    const r = executeOps(ops, { design: opts.design });
    t.steps += r.steps;
    t.violations += r.violations;
    t.earlyReturns += r.earlyReturns;
    t.doubleReturns += r.doubleReturns;
    t.leaks += r.leaks;
    t.dataMismatches += r.dataMismatches;
    t.errors += r.errors;
    t.lateTotal += r.lateTotal;
    if (r.violations > 0) {
      t.failingRuns++;
      if (firstSeed === null) {
        firstSeed = seed;
        first = explainFailure(seed, ops, r, opts.design, opts.shrink ?? true);
      }
    }
    onProgress?.(i + 1, snapshot(i + 1));
  }
  return snapshot(opts.runs);
}

/** Shrinks a failing op list (keeping the kind of its first violation) and replays the result with a trace. */
export function explainFailure(
  seed: number,
  ops: readonly OpRecord[],
  result: RunResult,
  design: ReleaseDesign,
  shrink: boolean,
): FailureReport {
  const kind: FailureKind | null = result.firstKind;
  const fails = (cand: readonly OpRecord[]): boolean => {
    const r = executeOps(cand, { design });
    return r.violations > 0 && (kind === null || hasKind(r, kind));
  };
  const s = shrink ? shrinkOps(ops, fails) : { ops: ops.slice(), tries: 0 };
  const shrunkResult = executeOps(s.ops, { design, trace: true });
  return { seed, ops, result, shrunk: s.ops, shrunkResult, shrinkTries: s.tries };
}

function hasKind(r: RunResult, kind: FailureKind): boolean {
  switch (kind) {
    case 'early-return':
      return r.earlyReturns > 0;
    case 'double-return':
      return r.doubleReturns > 0;
    case 'leak':
      return r.leaks > 0;
    case 'data-mismatch':
      return r.dataMismatches > 0;
    case 'error':
      return r.errors > 0;
  }
}
