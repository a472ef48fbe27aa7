// The fuzzer's operation sequences as a lab workload (tools/fuzz): `runs` seeded op lists, each executed on a fresh
// stack by the fuzz executor and checked by its oracle after every step. The design is wrapped (prototype
// delegation, behaviour unchanged) only to see netback's builds: the stack's counters and the packets and bytes
// that entered, and which packets completed as copied. A failing design is reported with its first failing
// seed's shrunk sequence and the operation at which that sequence's first violation shows.
import type { Page } from '../../backend/page.js';
import type { GrantSink, ReleaseDesign } from '../../backend/release.js';
import type { SkBuff, SkbContext } from '../../backend/skbuff.js';
import { executeOps } from '../fuzz/executor.js';
import { formatOp, OP_KINDS, type OpKind, type OpRecord } from '../fuzz/ops.js';
import { explainFailure, opsForSeed, runSeed } from '../fuzz/runner.js';
import { Random } from '../../shared/random.js';
import type { LabDesign } from './designs.js';
import { addStats, snapshotStats, type RunMeasure } from './run.js';

/** What the wrapped design saw during one executed op list. */
export class BuildObserver {
  ctx: SkbContext | null = null;
  packets = 0;
  bytes = 0;
  /** Foreign pages handed to the design, and packets whose every page came back (any as copied). */
  pages = 0;
  completions = 0;
  copiedCompletions = 0;
}

/** `design` with an attach that records what it is given before doing exactly what `design` does. */
export function observedDesign(design: ReleaseDesign, obs: BuildObserver): ReleaseDesign {
  const attach = (skb: SkBuff, pages: readonly Page[], sink: GrantSink): void => {
    obs.ctx ??= skb.ctx;
    obs.packets++;
    obs.bytes += skb.len;
    obs.pages += pages.length;
    // Netback's completion of one packet: when its last page comes back; copied if any came back as copied.
    let left = pages.length;
    let copied = false;
    const counting: GrantSink = {
      release(page: Page, zerocopySuccess?: boolean): void {
        // mainline's zerocopy_success = false: the frags were copied instead.
        if (zerocopySuccess === false) copied = true;
        if (--left === 0) {
          obs.completions++;
          if (copied) obs.copiedCompletions++;
        }
        if (zerocopySuccess === undefined) sink.release(page);
        else sink.release(page, zerocopySuccess);
      },
    };
    design.attach(skb, pages, counting);
  };
  return Object.create(design, { attach: { value: attach, enumerable: true } }) as ReleaseDesign;
}

/** Runs `runs` op lists from `seed` (run i uses seed + i, as `npm run fuzz`). Never throws. */
export function runOps(d: LabDesign, runs: number, seed: number): RunMeasure {
  const stats: Record<string, number> = {};
  let packets = 0;
  let bytes = 0;
  let pages = 0;
  let completions = 0;
  let copied = 0;
  let early = 0;
  let double = 0;
  let leaks = 0;
  let other = 0;
  let steps = 0;
  let lateTotal = 0;
  let wallMs = 0;
  let failingRuns = 0;
  let firstSeed = -1;
  let firstOps: readonly OpRecord[] = [];
  let firstResult: ReturnType<typeof executeOps> | null = null;
  for (let i = 0; i < runs; i++) {
    const s = runSeed(seed, i);
    const ops = opsForSeed(s);
    const obs = new BuildObserver();
    const design = observedDesign(d.design, obs);
    const t0 = performance.now();
    const r = executeOps(ops, { design });
    wallMs += performance.now() - t0;
    if (obs.ctx !== null) addStats(stats, snapshotStats(obs.ctx.stats));
    packets += obs.packets;
    bytes += obs.bytes;
    pages += obs.pages;
    completions += obs.completions;
    copied += obs.copiedCompletions;
    early += r.earlyReturns;
    double += r.doubleReturns;
    leaks += r.leaks;
    other += r.dataMismatches + r.errors;
    steps += r.steps;
    lateTotal += r.lateTotal;
    if (r.violations > 0) failingRuns++;
    if (r.violations > 0 && firstResult === null) {
      firstSeed = s;
      firstOps = ops;
      firstResult = r;
    }
  }
  let first: string | null = null;
  if (firstResult !== null) {
    // Shrink the first failing run (keeping its kind of failure) and name the operation that breaks the design.
    const f = explainFailure(firstSeed, firstOps, firstResult, d.design, true);
    const why = f.shrunkResult.messages[0] ?? firstResult.messages[0] ?? 'violation';
    first =
      `seed ${firstSeed}: ${why}; shrunk to ${f.shrunk.length} ops [${f.shrunk.map((o) => o.op).join(', ')}], ` +
      `breaking op: ${breakingOp(f.shrunk, why)} (replay: npm run fuzz -- --seed ${firstSeed} --runs 1 --design ${d.name})`;
  }
  return {
    packets,
    bytes,
    mapped: pages,
    guests: [],
    earlyReturns: early,
    doubleReturns: double,
    leaks,
    otherFailures: other,
    firstViolation: first,
    promptness: null,
    events: { runs, failingRuns },
    // The executor's lateTotal sums, over steps, the grants unreachable but not yet back: the sum of their delays
    // (grants netback answers at once never count, so the mean is per design-managed grant).
    lateMeanSteps: pages === 0 ? 0 : lateTotal / pages,
    stats,
    zerocopyCompletions: completions,
    copiedCompletions: copied,
    wallMs,
    steps,
    virtualMs: 0,
    notes: [],
  };
}

/**
 * The op at which the shrunk sequence's first violation shows (its messages say "at step N" or "step N:"), else
 * the sequence's last op.
 */
export function breakingOp(ops: readonly OpRecord[], message: string): string {
  const m = /\bstep (\d+)\b/.exec(message);
  const at = m === null ? ops.length : Number(m[1]);
  const op = ops[Math.min(ops.length, Math.max(1, at)) - 1];
  return op === undefined ? 'none' : formatOp(op);
}

/** The operations the per-operation probe applies (everything but building, duplicating by reference, freeing). */
export const PROBED_OPS: readonly OpKind[] = OP_KINDS.filter((k) => k !== 'build' && k !== 'free' && k !== 'get' && k !== 'clone');

/** What one probed operation did to a design: draws run, draws with an early return, early returns in all. */
export interface OpProbe {
  readonly runs: number;
  readonly failing: number;
  readonly earlyReturns: number;
}

/**
 * The classic shapes, per operation: two netback skbs A and B, a clone C of A, then the operation on C (even draws)
 * or on A (odd draws) with seeded parameters, then A and B are freed first and the rest at teardown. An operation
 * that gives C (or what it derives) a shinfo of its own while A's destructor still decides alone makes the oracle
 * see an early return: "naive's violations by operation".
 */
export function probeOps(design: ReleaseDesign, seed: number, draws: number): Record<string, OpProbe> {
  const out: Record<string, OpProbe> = {};
  for (const op of PROBED_OPS) {
    const rng = new Random((seed ^ hashName(op)) >>> 0);
    let failing = 0;
    let early = 0;
    for (let k = 0; k < draws; k++) {
      // Netback skbs with several mapped slots (executor build: b & 7 >= 2, c % 20 in 13..17).
      const build = (): OpRecord => ({ op: 'build', a: rng.u32(), b: ((rng.u32() & ~7) | 2 | (rng.u32() & 4)) >>> 0, c: 13 + rng.int(0, 4) });
      const ops: OpRecord[] = [
        build(),
        build(),
        { op: 'clone', a: 0, b: 0, c: 0 },
        { op, a: k % 2 === 0 ? 2 : 0, b: rng.u32(), c: rng.u32() },
        { op: 'free', a: 0, b: 0, c: 0 },
        { op: 'free', a: 0, b: 0, c: 0 },
      ];
      const r = executeOps(ops, { design });
      if (r.earlyReturns > 0) failing++;
      early += r.earlyReturns;
    }
    out[op] = { runs: draws, failing, earlyReturns: early };
  }
  return out;
}

function hashName(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}
